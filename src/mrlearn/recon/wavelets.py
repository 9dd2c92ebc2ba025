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


def _shift(x: torch.Tensor, j: int, dim: int) -> torch.Tensor:
    """``x[(i + j) mod n]`` along ``dim`` (``torch.roll`` by ``-j``); ``j = 0`` returns ``x`` itself."""
    return x if j % x.shape[dim] == 0 else torch.roll(x, -j, dims=dim)


def _analysis(x: torch.Tensor, lo: list[float], hi: list[float], dim: int) -> torch.Tensor:
    """One periodic analysis step along ``dim``: ``[low | high]`` halves, ``low[i] = sum_k lo[k] x[(2 i + k) % n]``.

    Polyphase form: with ``e = x[0::2]`` and ``o = x[1::2]``, ``low = sum_j lo[2j] e[i + j] + lo[2j+1] o[i + j]``
    (indices mod ``n / 2``), likewise ``high``; real filters act on complex data directly (no copies to real
    rows, exact for any ``n`` however short).
    """
    dim = dim % x.ndim
    pairs = x.unfold(dim, 2, 2)  # [..., n / 2 (at dim), ..., 2]
    even, odd = pairs[..., 0], pairs[..., 1]
    low = high = None
    for j in range(len(lo) // 2):
        e, o = _shift(even, j, dim), _shift(odd, j, dim)
        lj = lo[2 * j] * e + lo[2 * j + 1] * o
        hj = hi[2 * j] * e + hi[2 * j + 1] * o
        low = lj if low is None else low + lj
        high = hj if high is None else high + hj
    return torch.cat([low, high], dim=dim)


def _synthesis(y: torch.Tensor, lo: list[float], hi: list[float], dim: int) -> torch.Tensor:
    """Adjoint (= inverse) of :func:`_analysis` along ``dim``: ``x[2p] = sum_j lo[2j] low[p - j] + hi[2j] high[p - j]``,
    ``x[2p + 1]`` with the odd taps, the two phases interleaved."""
    dim = dim % y.ndim
    half = y.shape[dim] // 2
    low, high = y.narrow(dim, 0, half), y.narrow(dim, half, half)
    even = odd = None
    for j in range(len(lo) // 2):
        lw, hg = _shift(low, -j, dim), _shift(high, -j, dim)
        ej = lo[2 * j] * lw + hi[2 * j] * hg
        oj = lo[2 * j + 1] * lw + hi[2 * j + 1] * hg
        even = ej if even is None else even + ej
        odd = oj if odd is None else odd + oj
    return torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)


def _check(x: torch.Tensor, levels: int) -> None:
    h, w = x.shape[-2:]
    m = 2**levels
    if levels < 1 or h % m or w % m:
        raise ValueError(f"wavelet transform of {levels} levels needs sizes divisible by {m}, got {h} x {w}")


def dwt2(x: torch.Tensor, levels: int, wavelet: str = "db4") -> torch.Tensor:
    """Forward orthonormal 2-D DWT of ``[..., H, W]`` (in-place layout, same shape)."""
    _check(x, levels)
    lo, hi = _filters(wavelet)
    out = x.clone()
    h, w = x.shape[-2:]
    for _ in range(levels):
        band = out[..., :h, :w]
        band = _analysis(_analysis(band, lo, hi, -1), lo, hi, -2)
        out[..., :h, :w] = band
        h, w = h // 2, w // 2
    return out


def idwt2(coeffs: torch.Tensor, levels: int, wavelet: str = "db4") -> torch.Tensor:
    """Inverse (= adjoint) of :func:`dwt2`."""
    _check(coeffs, levels)
    lo, hi = _filters(wavelet)
    out = coeffs.clone()
    H, W = coeffs.shape[-2:]
    for level in reversed(range(levels)):
        h, w = H >> level, W >> level
        band = out[..., :h, :w]
        band = _synthesis(_synthesis(band, lo, hi, -2), lo, hi, -1)
        out[..., :h, :w] = band
    return out


def detail_mask(shape: tuple[int, int], levels: int, device: torch.device | None = None) -> torch.Tensor:
    """Float ``[H, W]``: 1 on detail coefficients, 0 on the coarse approximation block."""
    m = torch.ones(shape, device=device)
    m[: shape[0] >> levels, : shape[1] >> levels] = 0
    return m
