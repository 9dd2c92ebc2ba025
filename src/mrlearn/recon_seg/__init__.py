"""Joint reconstruction and segmentation from undersampled k-space: models (``recon_then_seg``, ``ynet``,
``unrolled_seg``, ``cross_stitch``, ``sluice``) and the training method ``recon_seg``."""
