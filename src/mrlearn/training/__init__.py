"""mrlearn.training."""
