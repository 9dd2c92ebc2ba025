"""mrlearn.commands."""
