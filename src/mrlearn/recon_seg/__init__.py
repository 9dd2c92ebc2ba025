"""Joint reconstruction and segmentation from undersampled k-space: models (``recon_then_seg``, ``ynet``,
``unrolled_seg``, ``cross_stitch``, ``sluice``, and the parameter-free ``zero_filled``), the training method
``recon_seg``, and the study runner ``recon_seg`` (``study``: pipelines joint / two_step / zero_filled / target,
each task selected on its own validation metric)."""
