"""mrlearn.recon: classical reconstructions (zero-filled, SENSE, CG-SENSE, L1-wavelet CS, TV) and a shared CG.

Importing the package registers the methods under registry kind ``"recon"`` (see :mod:`mrlearn.recon.methods`).
"""

from mrlearn.recon.methods import METHOD_NAMES, reconstruct, reconstruct_volume

__all__ = ["METHOD_NAMES", "reconstruct", "reconstruct_volume"]
