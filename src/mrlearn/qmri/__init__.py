"""mrlearn.qmri."""
