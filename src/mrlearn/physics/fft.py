"""Centered, orthonormal 2-D Fourier transforms (fastMRI convention).

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))`` over the last two axes, so the k-space centre
(DC) sits at index ``(H // 2, W // 2)`` and ``||fft2c(x)|| == ||x||``. Inputs are complex torch tensors of
shape ``[..., H, W]``; any leading batch/coil axes are carried along. Works on CPU and GPU.

Shift-free for even sizes: for even ``N`` both shifts are a roll by ``N / 2``, and rolling the input (output) of a
length-``N`` DFT by ``N / 2`` multiplies its output (input) by ``(-1)^k`` (``(-1)^n``), so
``fftshift(fft(ifftshift(x)))[k] = (-1)^(N/2) (-1)^k fft((-1)^n x)[k]`` (the same for ``ifft``). In 2-D:
``fft2c(x) = post * fft2(pre * x)`` with the real checkerboards ``pre[n1, n2] = (-1)^(n1 + n2)`` and
``post = (-1)^(H/2 + W/2) pre`` (:func:`centring`); multiplying by them is exact (+-1), only the FFT's rounding
differs from the roll version (float32 tolerance). Callers can fold ``pre`` / ``post`` into products they form
anyway (the sampling mask, the coil maps' sum: ``physics.sense``). A size with an odd axis keeps the rolls.
"""

from __future__ import annotations

import functools

import torch

_DIMS = (-2, -1)


@functools.lru_cache(maxsize=32)
def _checkerboards(h: int, w: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    parity = (torch.arange(h, device=device)[:, None] + torch.arange(w, device=device)[None, :]) % 2
    pre = (1 - 2 * parity).to(dtype)
    post = pre if (h // 2 + w // 2) % 2 == 0 else -pre
    return pre, post


def centring(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device | str
             ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(pre, post)`` real +-1 ``[H, W]`` (``dtype``: the real dtype of the data) with
    ``fft2c(x) = post * fft2(pre * x, norm="ortho")`` and ``ifft2c(y) = post * ifft2(pre * y, norm="ortho")``
    for ``shape = (..., H, W)``; None when ``H`` or ``W`` is odd (use the roll form). Do not modify them (cached)."""
    h, w = int(shape[-2]), int(shape[-1])
    if h % 2 or w % 2:
        return None
    return _checkerboards(h, w, dtype, torch.device(device))


def _roll_fft2c(image: torch.Tensor) -> torch.Tensor:
    x = torch.fft.ifftshift(image, dim=_DIMS)
    x = torch.fft.fft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def _roll_ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    x = torch.fft.ifftshift(kspace, dim=_DIMS)
    x = torch.fft.ifft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def fft2c(image: torch.Tensor) -> torch.Tensor:
    """Image ``[..., H, W]`` (complex) -> centered k-space ``[..., H, W]``."""
    c = centring(image.shape, image.real.dtype, image.device)
    if c is None:
        return _roll_fft2c(image)
    return torch.fft.fft2(image * c[0], dim=_DIMS, norm="ortho") * c[1]


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """Centered k-space ``[..., H, W]`` (complex) -> image ``[..., H, W]``; the adjoint (and inverse) of fft2c."""
    c = centring(kspace.shape, kspace.real.dtype, kspace.device)
    if c is None:
        return _roll_ifft2c(kspace)
    return torch.fft.ifft2(kspace * c[0], dim=_DIMS, norm="ortho") * c[1]
