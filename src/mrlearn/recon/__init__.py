"""mrlearn.recon."""
