"""Centered, orthonormal 2-D Fourier transforms (fastMRI convention).

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))`` over the last two axes, so the k-space centre
(DC) sits at index ``(H // 2, W // 2)`` and ``||fft2c(x)|| == ||x||``. Inputs are complex torch tensors of
shape ``[..., H, W]``; any leading batch/coil axes are carried along. Works on CPU and GPU.
"""

from __future__ import annotations

import torch

_DIMS = (-2, -1)


def fft2c(image: torch.Tensor) -> torch.Tensor:
    """Image ``[..., H, W]`` (complex) -> centered k-space ``[..., H, W]``."""
    x = torch.fft.ifftshift(image, dim=_DIMS)
    x = torch.fft.fft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """Centered k-space ``[..., H, W]`` (complex) -> image ``[..., H, W]``; the adjoint (and inverse) of fft2c."""
    x = torch.fft.ifftshift(kspace, dim=_DIMS)
    x = torch.fft.ifft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)
