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
    """Crop the last two axes to ``shape`` (sizes above the input's keep the input's) around the centre.

    The crop starts at ``(H - h) // 2`` and ``(W - w) // 2``, as fastMRI's ``center_crop``: the DC index ``n // 2``
    of the input lands on ``h // 2`` except when ``H`` is even and ``h`` odd (then on ``h // 2 + 1``, as fastMRI).
    """
    h, w = x.shape[-2:]
    ch, cw = min(shape[0], h), min(shape[1], w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]


def center_pad(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Zero-pad the last two axes to ``shape``, placing the input at ``(H - h) // 2`` and ``(W - w) // 2``.

    The exact inverse (and adjoint) of :func:`center_crop`: ``center_crop(center_pad(x, s), x.shape[-2:]) == x``.
    """
    h, w = x.shape[-2:]
    ph, pw = max(shape[0] - h, 0), max(shape[1] - w, 0)
    top, left = ph // 2, pw // 2
    return torch.nn.functional.pad(x, (left, pw - left, top, ph - top)) if (ph or pw) else x


def crop_or_pad(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bring the last two axes to exactly ``shape``: centre-crop where larger, zero-pad where smaller."""
    return center_pad(center_crop(x, shape), shape)
