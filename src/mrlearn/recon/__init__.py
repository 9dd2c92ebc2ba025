"""mrlearn.recon: classical reconstructions (zero-filled, SENSE, CG-SENSE, L1-wavelet CS, TV); never imports Lightning.

:func:`reconstruct` is the one entry point (numpy or torch, a slice or a volume; ESPIRiT maps when none are given).
The methods are registered under registry kind ``"recon"`` (:mod:`mrlearn.recon.methods`); their options and
defaults are their solvers' keyword arguments (:func:`valid_options`). :mod:`mrlearn.recon.folder` runs a method
over a folder of fastMRI files (``mrlearn reconstruct --method``).
"""

from mrlearn.recon.driver import reconstruct, valid_options
from mrlearn.recon.methods import METHOD_NAMES, NEEDS_MAPS, method_options

__all__ = ["METHOD_NAMES", "NEEDS_MAPS", "method_options", "reconstruct", "valid_options"]
