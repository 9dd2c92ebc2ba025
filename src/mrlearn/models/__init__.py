"""mrlearn.models."""
