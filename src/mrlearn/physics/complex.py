"""Complex <-> real views and simple complex utilities.

Networks see complex images as two real channels: ``[B, H, W]`` complex <-> ``[B, 2, H, W]`` real with
channel 0 = real part, channel 1 = imaginary part. The channel axis is always inserted at ``-3``.
"""

from __future__ import annotations

import torch


def complex_to_channels(x: torch.Tensor) -> torch.Tensor:
    """Complex ``[..., H, W]`` -> real ``[..., 2, H, W]`` (real, imaginary)."""
    return torch.stack((x.real, x.imag), dim=-3)


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """Real ``[..., 2, H, W]`` -> complex ``[..., H, W]``."""
    if x.shape[-3] != 2:
        raise ValueError(f"expected 2 channels (real, imaginary) at dim -3, got shape {tuple(x.shape)}")
    return torch.complex(x[..., 0, :, :].contiguous(), x[..., 1, :, :].contiguous())


def center_crop(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Crop the last two axes to ``shape`` around the centre (index ``n // 2`` stays central)."""
    h, w = x.shape[-2:]
    ch, cw = min(shape[0], h), min(shape[1], w)
    top, left = h // 2 - ch // 2, w // 2 - cw // 2
    return x[..., top : top + ch, left : left + cw]


def center_pad(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Zero-pad the last two axes to ``shape`` around the centre (inverse of :func:`center_crop`)."""
    h, w = x.shape[-2:]
    ph, pw = max(shape[0] - h, 0), max(shape[1] - w, 0)
    top = shape[0] // 2 - h // 2 if ph else 0
    left = shape[1] // 2 - w // 2 if pw else 0
    return torch.nn.functional.pad(x, (left, pw - left, top, ph - top)) if (ph or pw) else x


def crop_or_pad(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bring the last two axes to exactly ``shape``: centre-crop where larger, zero-pad where smaller."""
    return center_pad(center_crop(x, shape), shape)
