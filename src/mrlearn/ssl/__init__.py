"""mrlearn.ssl."""
