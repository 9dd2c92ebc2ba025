"""mrlearn.evaluation."""
