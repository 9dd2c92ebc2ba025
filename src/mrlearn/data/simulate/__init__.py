"""mrlearn.data.simulate."""
