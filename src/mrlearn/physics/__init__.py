"""mrlearn.physics."""
