"""SENSE forward/adjoint operators and coil combination.

Shapes (batched; leading axes broadcast):
  image     ``[B, H, W]`` complex
  sens_maps ``[B, C, H, W]`` complex
  kspace    ``[B, C, H, W]`` complex (multi-coil) or ``[B, H, W]`` (single-coil)
  mask      real/bool, broadcastable to kspace (e.g. ``[B, 1, 1, W]`` for column masks, ``[B, 1, H, W]`` 2-D)

Forward ``A m = M F (S m)``; adjoint ``A^H y = sum_c conj(S_c) F^H (M y_c)`` (REFERENCE section 2).
Single-coil: ``A m = M F m`` and ``A^H y = F^H (M y)``.
"""

from __future__ import annotations

import torch

from mrlearn.physics.fft import fft2c, ifft2c


def apply_mask(kspace: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero unsampled locations; ``+ 0.0`` so masked entries carry no negative zero."""
    if mask is None:
        return kspace
    return kspace * mask.to(kspace.real.dtype) + 0.0


def sense_forward(image: torch.Tensor, sens_maps: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, H, W]`` image -> ``[B, C, H, W]`` masked coil k-space (``[B, H, W]`` when ``sens_maps`` is None)."""
    coil_images = image if sens_maps is None else sens_maps * image.unsqueeze(-3)
    return apply_mask(fft2c(coil_images), mask)


def sense_adjoint(kspace: torch.Tensor, sens_maps: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, C, H, W]`` coil k-space -> ``[B, H, W]`` coil-combined image (adjoint of :func:`sense_forward`)."""
    coil_images = ifft2c(apply_mask(kspace, mask))
    if sens_maps is None:
        return coil_images
    return (sens_maps.conj() * coil_images).sum(dim=-3)


def sense_normal(image: torch.Tensor, sens_maps: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """``A^H A m`` (the mask is applied once, as ``M^H M = M`` for a binary mask)."""
    return sense_adjoint(sense_forward(image, sens_maps, mask), sens_maps, None)


def rss(coil_images: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Root-sum-of-squares over the coil axis: real magnitude ``[B, H, W]`` from ``[B, C, H, W]``."""
    return torch.sqrt((coil_images.abs() ** 2).sum(dim=dim))


def rss_from_kspace(kspace: torch.Tensor) -> torch.Tensor:
    """RSS image of (possibly undersampled, i.e. zero-filled) multi-coil k-space ``[..., C, H, W]``."""
    return rss(ifft2c(kspace), dim=-3)


class SenseOperator:
    """The SENSE encoding operator ``E = M F S`` for fixed maps and mask, with ``forward``/``adjoint``/``normal``."""

    def __init__(self, sens_maps: torch.Tensor | None, mask: torch.Tensor | None):
        self.sens_maps = sens_maps
        self.mask = mask

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return sense_forward(image, self.sens_maps, self.mask)

    def adjoint(self, kspace: torch.Tensor) -> torch.Tensor:
        return sense_adjoint(kspace, self.sens_maps, self.mask)

    def normal(self, image: torch.Tensor) -> torch.Tensor:
        return sense_normal(image, self.sens_maps, self.mask)
