"""mrlearn.data."""
