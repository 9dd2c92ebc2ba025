"""mrlearn.mtl."""
