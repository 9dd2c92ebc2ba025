"""Orthogonal 2-D Daubechies wavelet transform in torch (periodic boundaries), batched, CPU and GPU.

Input ``[..., H, W]`` (real or complex) with ``H`` and ``W`` divisible by ``2 ** levels``. Output has the same
shape, in the usual in-place layout: after ``levels`` levels the coarse approximation sits in the top-left
``H / 2**levels x W / 2**levels`` block, the detail bands around it. The transform is orthonormal
(``||W x|| = ||x||`` and ``W^{-1} = W^H``), so soft-thresholding its coefficients is an exact proximal step.
Filters: Daubechies ``dbN`` with ``N`` vanishing moments (``2N`` taps; ``db1`` = Haar), the standard published
coefficients. :func:`pad_shape` gives the smallest padded size a transform of ``levels`` levels accepts.

Relation to PyWavelets: one level here is ``low[i] = sum_k lo[k] x[(2 i + k) mod n]`` (``lo`` the scaling filter
below, ``hi`` its quadrature mirror), which equals ``pywt.dwt2(x, "dbN", mode="periodization")`` applied to the
input rolled by ``N - 1`` samples along each axis -- ``x`` here = ``roll(x, N - 1)`` there: one pixel for ``db2``
(BART's ``dau2``), three for ``db4``, none for Haar; the bands sit as ``[[cA, cV], [cH, cD]]`` (tested against
PyWavelets). Deeper levels repeat the step on the coarse band (so the offset is not one global shift).
"""

from __future__ import annotations

import math

import torch

from mrlearn.errors import input_error

#: Daubechies scaling (low-pass reconstruction) filters, sum = sqrt(2), unit norm.
DAUBECHIES: dict[str, tuple[float, ...]] = {
    "db1": (0.7071067811865476, 0.7071067811865476),
    "db2": (0.48296291314453416, 0.8365163037378079, 0.2241438680420134, -0.12940952255126037),
    "db3": (0.33267055295008263, 0.8068915093110925, 0.45987750211849154, -0.13501102001025458,
            -0.08544127388202666, 0.03522629188570953),
    "db4": (0.2303778133088965, 0.7148465705529157, 0.6308807679298589, -0.027983769416859854,
            -0.18703481171909309, 0.030841381835560764, 0.0328830116668852, -0.010597401785069032),
}


def _filters(name: str) -> tuple[list[float], list[float]]:
    if name not in DAUBECHIES:
        raise input_error("wavelet", f"unknown wavelet {name!r}", f"choose one of: {', '.join(DAUBECHIES)}")
    lo = list(DAUBECHIES[name])
    n = len(lo)
    hi = [(-1) ** k * lo[n - 1 - k] for k in range(n)]  # quadrature mirror filter
    return lo, hi


def pad_shape(shape: tuple[int, int], levels: int) -> tuple[int, int]:
    """Smallest ``(H', W') >= shape`` divisible by ``2 ** levels``."""
    m = 2**levels
    return (math.ceil(shape[0] / m) * m, math.ceil(shape[1] / m) * m)


def default_levels(shape: tuple[int, int], min_size: int = 16) -> int:
    """As BART: decompose while the band to split is at least ``min_size`` on its shorter side (at least 1 level)."""
    return max(1, int(math.floor(math.log2(max(min(shape), 1) / min_size))) + 1)


def _filter_bank(lo: list[float], hi: list[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[2, 1, taps]`` conv1d weights: row 0 the low-pass, row 1 the high-pass filter."""
    return torch.tensor([lo, hi], dtype=dtype, device=device).unsqueeze(1)


def _analysis(x: torch.Tensor, bank: torch.Tensor, dim: int) -> torch.Tensor:
    """One periodic analysis step along ``dim``: ``[low | high]`` halves, ``low[i] = sum_k lo[k] x[(2 i + k) % n]``.

    A strided ``conv1d`` on the signal extended periodically by ``taps - 2`` samples (complex data as two real
    rows).
    """
    real = torch.view_as_real(x) if x.is_complex() else x.unsqueeze(-1)
    dim = dim % x.ndim
    moved = real.movedim(dim, -1)  # [..., 2|1, n]
    shape = moved.shape
    n, taps = shape[-1], bank.shape[-1]
    rows = moved.reshape(-1, 1, n)
    if taps > 2:
        rows = torch.cat([rows, rows[..., : taps - 2]], dim=-1)
    out = torch.nn.functional.conv1d(rows, bank, stride=2)  # [N, 2, n / 2]
    out = out.reshape(*shape[:-1], n).movedim(-1, dim)
    return torch.view_as_complex(out.contiguous()) if x.is_complex() else out.squeeze(-1)


def _synthesis(y: torch.Tensor, bank: torch.Tensor, dim: int) -> torch.Tensor:
    """Adjoint (= inverse) of :func:`_analysis` along ``dim`` (a transposed strided conv, wrap-around folded back)."""
    real = torch.view_as_real(y) if y.is_complex() else y.unsqueeze(-1)
    dim = dim % y.ndim
    moved = real.movedim(dim, -1)
    shape = moved.shape
    n, taps = shape[-1], bank.shape[-1]
    rows = moved.reshape(-1, 2, n // 2)
    out = torch.nn.functional.conv_transpose1d(rows, bank, stride=2)  # [N, 1, n + taps - 2]
    out = out[:, 0]
    if taps > 2:
        out = torch.cat([out[:, : taps - 2] + out[:, n:], out[:, taps - 2 : n]], dim=-1)
    out = out.reshape(shape).movedim(-1, dim)
    return torch.view_as_complex(out.contiguous()) if y.is_complex() else out.squeeze(-1)


def _check(x: torch.Tensor, levels: int) -> None:
    h, w = x.shape[-2:]
    m = 2**levels
    if levels < 1 or h % m or w % m:
        raise ValueError(f"wavelet transform of {levels} levels needs sizes divisible by {m}, got {h} x {w}")


def dwt2(x: torch.Tensor, levels: int, wavelet: str = "db4") -> torch.Tensor:
    """Forward orthonormal 2-D DWT of ``[..., H, W]`` (in-place layout, same shape)."""
    _check(x, levels)
    bank = _filter_bank(*_filters(wavelet), x.real.dtype, x.device)
    out = x.clone()
    h, w = x.shape[-2:]
    for _ in range(levels):
        band = out[..., :h, :w]
        band = _analysis(_analysis(band, bank, -1), bank, -2)
        out[..., :h, :w] = band
        h, w = h // 2, w // 2
    return out


def idwt2(coeffs: torch.Tensor, levels: int, wavelet: str = "db4") -> torch.Tensor:
    """Inverse (= adjoint) of :func:`dwt2`."""
    _check(coeffs, levels)
    bank = _filter_bank(*_filters(wavelet), coeffs.real.dtype, coeffs.device)
    out = coeffs.clone()
    H, W = coeffs.shape[-2:]
    for level in reversed(range(levels)):
        h, w = H >> level, W >> level
        band = out[..., :h, :w]
        band = _synthesis(_synthesis(band, bank, -2), bank, -1)
        out[..., :h, :w] = band
    return out


def detail_mask(shape: tuple[int, int], levels: int, device: torch.device | None = None) -> torch.Tensor:
    """Float ``[H, W]``: 1 on detail coefficients, 0 on the coarse approximation block."""
    m = torch.ones(shape, device=device)
    m[: shape[0] >> levels, : shape[1] >> levels] = 0
    return m
