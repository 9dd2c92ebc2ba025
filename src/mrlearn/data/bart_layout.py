"""Which BART layout a k-space array uses, and its conversion to fastMRI's ``[S, C, H, W]``.

BART's convention (``misc/mri.h``): x (readout), y, z in dims 0-2, coils in dim 3, ESPIRiT map sets in dim 4,
slices in dim 13. The layouts recognised (``d_i`` = size of dim i; arrays padded to 16 dims):

``standard``        ``[X, Y, 1, C, ..., S]``: H = X, W = Y.
``kykz-slice``      ``[1, Y, Z, C, ..., S]``: a 2-D slice of a 3-D acquisition whose readout was inverse-Fourier
                    transformed; its image plane is dims 1-2: H = Y, W = Z.
``coils-in-dim2``   ``[X, Y, C, 1]`` with dim 2 *not* a Fourier axis (see :func:`is_fourier_axis`) and at most
                    64 entries: the coils were left in dim 2; taken as coils, as ``bart transpose 2 3`` would.
``slices-in-dim2``  ``[X, Y, N, C]`` (C > 1, or N > 64) with dim 2 not a Fourier axis: N image-space slices
                    stored in dim 2; taken as slices, as ``bart transpose 2 13`` would.
``3d-kspace``       ``[X, Y, Z, C]`` with dims 0 and 2 Fourier axes: 3-D k-space. The readout is inverse-Fourier
                    transformed (centered, orthonormal, as ``bart fft -u -i 1``) and every x position becomes a
                    2-D slice of ky x kz (H = Y, W = Z), as ``bart fft -u -i 1`` then ``bart transpose 0 13``.
``3d-hybrid``       ``[X, Y, Z, C]`` with dim 2 a Fourier axis and dim 0 not: the readout is already in image
                    space; every x position is a slice of ky x kz.

Refused, with the BART command that fixes it: data in dims other than 0-3 and 13 (4 for maps), and dims 2 and
13 both holding more than one entry. Sensitivity maps follow the layout of their k-space (never transformed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrlearn.data import cfl as bart
from mrlearn.errors import input_error

MAX_COILS_IN_DIM2 = 64
_NOTES = {
    "standard": None,
    "kykz-slice": "BART [1, ky, kz, coils] layout: each slice is one 2-D ky x kz slice (H = ky, W = kz)",
    "coils-in-dim2": "dim 2 holds no Fourier axis and dim 3 is empty: dim 2 taken as the coils (as `bart transpose 2 3`)",
    "slices-in-dim2": "dim 2 holds no Fourier axis: taken as image-space slices (as `bart transpose 2 13`)",
    "3d-kspace": ("3-D k-space: readout inverse-FFT'd (centered, unitary, as `bart fft -u -i 1`); each x position is "
                  "a ky x kz slice (as `bart transpose 0 13`)"),
    "3d-hybrid": "3-D data with the readout already in image space: each x position is a ky x kz slice",
}


@dataclass(frozen=True)
class Layout:
    """A recognised layout: ``name`` (see the module docstring) and ``note`` (what was done, None when standard)."""

    name: str

    @property
    def note(self) -> str | None:
        return _NOTES[self.name]


def axis_energy(a: np.ndarray, dim: int) -> np.ndarray:
    """``sum |a|^2`` over every dim but ``dim`` (float64)."""
    mag2 = a.real.astype(np.float64) ** 2 + a.imag.astype(np.float64) ** 2
    return mag2.sum(axis=tuple(d for d in range(a.ndim) if d != dim))


def is_fourier_axis(energy: np.ndarray) -> bool:
    """Whether an energy profile along one axis looks like a k-space (Fourier) axis.

    k-space of an MR image concentrates its energy at the centre index ``n // 2``: the peak is there (within one
    index), the central band of ``n // 8`` (at least one) entries holds more than half the energy, and two indices
    away from the peak the energy has fallen below half the peak. Image-space axes (slices, readout after the
    inverse FFT) and coil axes vary slowly and fail at least one test. Axes shorter than 8 are never taken as
    Fourier axes.
    """
    e = np.asarray(energy, dtype=np.float64)
    n = e.shape[0]
    total = float(e.sum())
    if n < 8 or total <= 0:
        return False
    c, m = n // 2, int(np.argmax(e))
    if abs(m - c) > 1:
        return False
    half = max(1, n // 8) // 2
    band = float(e[c - half: c + half + 1].sum())
    near = max(e[m - 2] if m >= 2 else 0.0, e[m + 2] if m + 2 < n else 0.0)
    return band > 0.5 * total and near < 0.5 * e[m]


def detect_layout(a: np.ndarray, where: Path | str, what: str = "k-space", allow_maps: bool = False) -> Layout:
    """The :class:`Layout` of a 16-dim BART array ``a`` (k-space), or a one-line error with the fix."""
    kept = (0, 1, 2, 3, bart.SLICE_DIM) + ((bart.MAPS_DIM,) if allow_maps else ())
    extra = [d for d in range(bart.BART_DIMS) if d not in kept and a.shape[d] != 1]
    if extra:
        raise input_error(where, f"{what} has extra BART dims {extra} with sizes {[a.shape[d] for d in extra]}",
                          f"select one entry of each first (e.g. `bart slice {extra[0]} 0 IN OUT`), keeping dims 0-3 and 13")
    d0, d2, d3, d13 = a.shape[0], a.shape[2], a.shape[3], a.shape[bart.SLICE_DIM]
    if d2 == 1:
        return Layout("standard")
    if d0 == 1:
        return Layout("kykz-slice")
    dim2_fourier = is_fourier_axis(axis_energy(a, 2))
    if not dim2_fourier and d3 == 1 and d2 <= MAX_COILS_IN_DIM2:
        return Layout("coils-in-dim2")
    if d13 > 1:
        raise input_error(where, f"{what} has {d2} entries in dim 2 and {d13} slices in dim 13",
                          "convert one slab at a time (e.g. `bart slice 13 0 IN OUT`)")
    if not dim2_fourier:
        return Layout("slices-in-dim2")
    return Layout("3d-kspace" if is_fourier_axis(axis_energy(a, 0)) else "3d-hybrid")


def _ifft_readout(a: np.ndarray) -> np.ndarray:
    """Centered orthonormal inverse FFT along axis 0 (the convention of :mod:`mrlearn.physics.fft`)."""
    out = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(a, axes=0), axis=0, norm="ortho"), axes=0)
    return out.astype(np.complex64)


def to_scwh(a: np.ndarray, layout: Layout, transform: bool = True) -> np.ndarray:
    """16-dim BART array -> complex64 ``[S, C, H, W]`` for ``layout`` (first map set of dim 4).

    ``transform=False`` skips the readout inverse FFT of ``3d-kspace`` (for sensitivity maps, already images).
    """
    index = tuple(slice(None) if d in (0, 1, 2, 3, bart.SLICE_DIM) else 0 for d in range(bart.BART_DIMS))
    b = a[index]  # [X, Y, Z, C, S]
    name = layout.name
    if name == "standard":
        out = np.transpose(b[:, :, 0], (3, 2, 0, 1))
    elif name == "kykz-slice":
        out = np.transpose(b[0], (3, 2, 0, 1))  # [Y, Z, C, S] -> [S, C, Y, Z]
    elif name == "coils-in-dim2":
        out = np.transpose(b[:, :, :, 0], (3, 2, 0, 1))  # [X, Y, C, S] -> [S, C, X, Y]
    elif name == "slices-in-dim2":
        out = np.transpose(b[..., 0], (2, 3, 0, 1))  # [X, Y, N, C] -> [N, C, X, Y]
    else:  # 3-D: every x position is a ky x kz slice
        v = b[..., 0]
        if name == "3d-kspace" and transform:
            v = _ifft_readout(v)
        out = np.transpose(v, (0, 3, 1, 2))  # [X, Y, Z, C] -> [X, C, Y, Z]
    return np.ascontiguousarray(out, dtype=np.complex64)
