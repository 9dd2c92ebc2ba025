"""Zero-filled reconstructions: RSS of the coil images and the SENSE coil combination ``A^H y``.

kspace ``[B, C, H, W]`` complex (centred), mask broadcastable (None = use k-space as given). Outputs ``[B, H, W]``.
"""

from __future__ import annotations

import torch

from mrlearn.physics.fft import ifft2c
from mrlearn.physics.sense import apply_mask, rss, sense_adjoint
from mrlearn.recon.inputs import check_kspace, check_mask, check_sens_maps


def zero_filled_rss(kspace: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Root-sum-of-squares of the zero-filled coil images: real magnitude ``[B, H, W]``."""
    kspace = check_kspace(kspace)
    mask = check_mask(mask, kspace)
    return rss(ifft2c(apply_mask(kspace, mask)), dim=1)


def sense_zero_filled(kspace: torch.Tensor, mask: torch.Tensor | None = None,
                      sens_maps: torch.Tensor | None = None) -> torch.Tensor:
    """SENSE-combined zero-filled image ``A^H y = sum_c conj(S_c) F^H (M y_c)``: complex ``[B, H, W]``."""
    kspace = check_kspace(kspace)
    mask = check_mask(mask, kspace)
    maps = check_sens_maps(sens_maps, kspace)
    return sense_adjoint(kspace, maps, mask)
