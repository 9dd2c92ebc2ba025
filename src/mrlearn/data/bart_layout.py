"""Which BART layout a k-space array uses, and its conversion to fastMRI's ``[S, C, H, W]``.

BART's convention (``misc/mri.h``): x (readout), y, z in dims 0-2, coils in dim 3, ESPIRiT map sets in dim 4,
slices in dim 13. k-space has no map sets: coils found in dim 4 with dim 3 empty are taken as the coils (as
``bart transpose 3 4``; the label gets ``+coils-in-dim4``). The layouts (``d_i`` = size of dim i, 16 dims):

``standard``        ``[X, Y, 1, C, ..., S]``: H = X, W = Y.
``kykz-slice``      ``[1, Y, Z, C, ..., S]``: a 2-D slice of a 3-D acquisition whose readout was inverse-Fourier
                    transformed; its image plane is dims 1-2: H = Y, W = Z.
``coils-in-dim2``   ``[X, Y, C, 1, ..., S]`` with ``--dim2 coils``: as ``bart transpose 2 3``.
``slices-in-dim2``  ``[X, Y, N, C]``, dim 2 image space: N slices, as ``bart transpose 2 13``.
``3d-partitions``   ``[X, Y, Z, C]``, dim 2 a k-space partition axis whose sampling is separable (a kx-ky pattern
                    times a kz pattern: fully sampled, ky-only undersampling, whole partitions absent): the centred
                    orthonormal inverse FFT along dim 2 (as ``bart fft -u -i 4``) gives Z slices of kx x ky
                    (H = X, W = Y), all with one sampling pattern.
``3d-partitions-hybrid``  the same with the readout already in image space: it is Fourier-transformed back
                    (centred orthonormal forward FFT, as ``bart fft -u 1``) so that every slice is k-space.
``3d-kspace``       ``[X, Y, Z, C]``, dim 2 a k-space axis sampled differently per partition (ky-kz undersampling,
                    Z >= 8): the readout is inverse-FFT'd (as ``bart fft -u -i 1``) and every x position is a
                    ky x kz slice (H = Y, W = Z), as ``bart transpose 0 13`` then; exact for any ky-kz pattern.
``3d-hybrid``       the same with the readout already in image space (no transform).

What dim 2 holds is read from the data (:mod:`mrlearn.data.bart_axes`) when dim 3 holds several coils; the
readout of 3-D data is taken as image space when its coherent measure exceeds its centre measure. With one
entry in dim 3 (coils, single-coil slices and single-coil partitions all fit) or when the data do not say, the
user states it with ``dim2`` (``--dim2 kspace|slices|coils``). Refused, with the command that fixes it: data in
dims other than 0-4 and 13, k-space in both dims 3 and 4, and dims 2 and 13 both used. Sensitivity maps follow
their k-space's layout (never Fourier-transformed).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.fft

from mrlearn.data import cfl as bart
from mrlearn.data.bart_axes import axis_evidence, partition_sampling
from mrlearn.errors import input_error

DIM2_CHOICES = ("kspace", "slices", "coils")
MIN_KYKZ = 8  # ky x kz slices narrower than this are refused (the matrix minimum)
_PARTITIONS_NOTE = ("inverse-FFT'd along dim 2 (centred, orthonormal, as `bart fft -u -i 4`), one kx x ky slice per "
                    "partition")
_NOTES = {
    "standard": None,
    "kykz-slice": "BART [1, ky, kz, coils] layout: each slice is one 2-D ky x kz slice (H = ky, W = kz)",
    "coils-in-dim2": "dim 2 taken as the coils (as `bart transpose 2 3`)",
    "slices-in-dim2": "dim 2 taken as image-space slices (as `bart transpose 2 13`)",
    "3d-partitions": _PARTITIONS_NOTE,
    "3d-partitions-hybrid": ("readout already in image space, Fourier-transformed back (as `bart fft -u 1`); "
                             + _PARTITIONS_NOTE),
    "3d-kspace": ("partitions sampled differently (ky-kz undersampling): readout inverse-FFT'd (centred, orthonormal, "
                  "as `bart fft -u -i 1`); each x position is a ky x kz slice (as `bart transpose 0 13`)"),
    "3d-hybrid": ("partitions sampled differently (ky-kz undersampling), readout already in image space: each x "
                  "position is a ky x kz slice (as `bart transpose 0 13`)"),
}
_COILS_IN_DIM4 = "coils found in dim 4 (MAPS) with dim 3 empty: taken as the coils (as `bart transpose 3 4`)"


@dataclass(frozen=True)
class Layout:
    """A recognised layout: ``name`` (see the module docstring), ``coil_dim`` (3, or 4 when the coils sat in dim 4),
    ``why`` (how dim 2 was decided: the ``--dim2`` flag or the data's evidence; empty when not used) and
    ``detail`` (a remark on the data, e.g. partitions holding no data)."""

    name: str
    coil_dim: int = 3
    why: str = ""
    detail: str = ""

    @property
    def label(self) -> str:
        """The name stored in the ``bart_layout`` attr."""
        return self.name + ("+coils-in-dim4" if self.coil_dim == 4 else "")

    @property
    def note(self) -> str | None:
        """One line saying what was done (None for the standard layout with coils in dim 3)."""
        parts = [_COILS_IN_DIM4] if self.coil_dim == 4 else []
        if _NOTES[self.name]:
            parts.append((f"{self.why}: " if self.why else "") + _NOTES[self.name])
        if self.detail:
            parts.append(self.detail)
        return "; ".join(parts) or None


def bart_cmd(*args: object) -> str:
    """A shell-quoted ``bart`` command line in backticks, for advice in messages."""
    return "`bart " + " ".join(shlex.quote(str(a)) for a in args) + "`"


def _suffixed(base: Path, suffix: str) -> Path:
    return base.with_name(base.name + suffix)


def _refuse_extra_dims(a: np.ndarray, src: Path) -> None:
    extra = [d for d in range(bart.BART_DIMS) if d not in (0, 1, 2, 3, bart.SLICE_DIM) and a.shape[d] != 1]
    if not extra:
        return
    sizes = [a.shape[d] for d in extra]
    out = _suffixed(src, "_sel")
    keep_one = bart_cmd("slice", *[v for d in extra for v in (d, 0)], src, out)
    if extra == [bart.MAPS_DIM]:
        merged = _suffixed(src, "_coils")
        d3, d4 = a.shape[bart.COIL_DIM], a.shape[bart.MAPS_DIM]
        raise input_error(src, f"k-space has {d3} entries in dim 3 (COIL) and {d4} in dim 4 (MAPS; k-space has no "
                               "map sets)",
                          f"if dims 3 and 4 together are the coils, merge them: "
                          f"{bart_cmd('reshape', 24, d3 * d4, 1, src, merged)}, then convert its output; else keep the "
                          f"first entry of dim 4: {keep_one}")
    raise input_error(src, f"k-space has data in BART dims {extra} (sizes {sizes}), which mrlearn does not convert",
                      f"keep one entry of each: {keep_one}, then convert its output")


def _dim2_mode(a: np.ndarray, src: Path, dim2: str | None) -> tuple[str, str]:
    """What dim 2 holds (one of :data:`DIM2_CHOICES`) and why, or a one-line refusal naming ``--dim2``."""
    d2, d3 = a.shape[2], a.shape[bart.COIL_DIM]
    if dim2 is not None:
        if dim2 == "coils" and d3 > 1:
            raise input_error(src, f"--dim2 coils, but dim 3 already holds {d3} coils",
                              "pass --dim2 slices or --dim2 kspace, or leave --dim2 out")
        return dim2, f"--dim2 {dim2}"
    evidence = axis_evidence(a, 2)
    verdict = evidence.verdict
    if d3 == 1:
        hint = {"kspace": "; its energy profile looks like k-space", "image": "; its energy profile looks like image "
                "space (coils or slices)"}.get(verdict or "", "")
        raise input_error(src, f"dim 2 holds {d2} entries and dim 3 (coils) one: they may be coils, single-coil "
                               f"slices or single-coil k-space partitions{hint}",
                          "say which: rerun with --dim2 coils, --dim2 slices or --dim2 kspace")
    if verdict is None:
        raise input_error(src, f"the data do not say whether dim 2 ({d2} entries) is a k-space partition axis or "
                               f"holds image-space slices ({evidence.describe()})",
                          "say which: rerun with --dim2 kspace or --dim2 slices")
    why = f"dim 2 judged {'k-space' if verdict == 'kspace' else 'image space'} from the data ({evidence.describe()})"
    return ("kspace" if verdict == "kspace" else "slices"), why


def detect_layout(a: np.ndarray, where: Path | str, dim2: str | None = None) -> Layout:
    """The :class:`Layout` of a 16-dim BART k-space array ``a``, or a one-line error with the fix.

    ``dim2``: what dim 2 holds when it holds several entries (:data:`DIM2_CHOICES`); None: read from the data.
    """
    src = Path(where)
    if dim2 is not None and dim2 not in DIM2_CHOICES:
        raise input_error("--dim2", f"unknown value {dim2!r}", f"use one of {', '.join(DIM2_CHOICES)}")
    coil_dim = 3
    if a.shape[bart.COIL_DIM] == 1 and a.shape[bart.MAPS_DIM] > 1:
        coil_dim, a = 4, np.swapaxes(a, bart.COIL_DIM, bart.MAPS_DIM)
    _refuse_extra_dims(a, src)
    d0, d1, d2, d13 = a.shape[0], a.shape[1], a.shape[2], a.shape[bart.SLICE_DIM]
    if d2 == 1:
        if dim2 is not None:
            raise input_error(src, f"--dim2 {dim2} given, but dim 2 holds one entry", "leave --dim2 out for this file")
        return Layout("standard", coil_dim)
    if d0 == 1:
        if dim2 not in (None, "kspace"):
            raise input_error(src, f"--dim2 {dim2} given, but dim 0 holds one entry: [1, ky, kz, coils] is one ky x kz "
                                   "slice (dim 2 is kz)", "leave --dim2 out for this file")
        return Layout("kykz-slice", coil_dim)
    if d13 > 1 and (dim2 in ("kspace", "slices") or (dim2 is None and a.shape[bart.COIL_DIM] > 1)):
        raise input_error(src, f"k-space has {d2} entries in dim 2 and {d13} slices in dim 13",
                          f"convert one slab at a time: {bart_cmd('slice', 13, 0, src, _suffixed(src, '_slab0'))}, "
                          "then convert its output (and slabs 1, 2, ... likewise)")
    mode, why = _dim2_mode(a, src, dim2)
    if mode == "coils":
        return Layout("coils-in-dim2", coil_dim, why)
    if mode == "slices":
        return Layout("slices-in-dim2", coil_dim, why)
    readout = axis_evidence(a, 0)
    hybrid = readout.coherent > readout.centre  # the readout is always k-space or image space: the likelier one
    separable, empty = partition_sampling(a)
    if separable:
        detail = f"partitions {empty} hold no data (the slices are zero-filled along kz)" if empty else ""
        return Layout("3d-partitions-hybrid" if hybrid else "3d-partitions", coil_dim, why, detail)
    if d2 < MIN_KYKZ or d1 < MIN_KYKZ:
        raise input_error(src, f"dim 2 is a k-space partition axis of {d2} entries sampled differently per partition "
                               f"(ky-kz undersampling): an inverse FFT along it would alias, and ky x kz slices of "
                               f"{d1} x {d2} are too small",
                          f"such data do not split into 2-D slices exactly (ky x kz slices need at least {MIN_KYKZ} "
                          "partitions); reconstruct it in 3-D")
    return Layout("3d-hybrid" if hybrid else "3d-kspace", coil_dim, why)


def maps_layout(layout: Layout, maps_shape: tuple[int, ...]) -> Layout:
    """The layout of sensitivity maps for k-space read with ``layout``: coils in dim 3 when the maps have them
    there (their map sets in dim 4), else in dim 4 like the k-space."""
    if layout.coil_dim == 4 and maps_shape[bart.COIL_DIM] > 1:
        return replace(layout, coil_dim=3)
    return layout


def _centred_fft(v: np.ndarray, axis: int, inverse: bool) -> np.ndarray:
    """Centred orthonormal (inverse) FFT along ``axis`` (the convention of :mod:`mrlearn.physics.fft`), computed in
    the input's precision (complex64 stays complex64)."""
    f = scipy.fft.ifft if inverse else scipy.fft.fft
    return np.fft.fftshift(f(np.fft.ifftshift(v, axes=axis), axis=axis, norm="ortho", workers=-1), axes=axis)


def to_scwh(a: np.ndarray, layout: Layout, transform: bool = True) -> np.ndarray:
    """16-dim BART array -> complex64 ``[S, C, H, W]`` for ``layout`` (first map set of dim 4).

    ``transform=False`` skips the Fourier transforms of the 3-D layouts (for sensitivity maps, already images).
    """
    if layout.coil_dim == 4:
        a = np.swapaxes(a, bart.COIL_DIM, bart.MAPS_DIM)
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
    elif name.startswith("3d-partitions"):
        v = b[..., 0]  # [X, Y, Z, C]
        if transform:
            v = _centred_fft(v, 2, inverse=True)
            if name == "3d-partitions-hybrid":
                v = _centred_fft(v, 0, inverse=False)
        out = np.transpose(v, (2, 3, 0, 1))  # [X, Y, Z, C] -> [Z, C, X, Y]
    else:  # 3d-kspace / 3d-hybrid: every x position is a ky x kz slice
        v = b[..., 0]
        if name == "3d-kspace" and transform:
            v = _centred_fft(v, 0, inverse=True)
        out = np.transpose(v, (0, 3, 1, 2))  # [X, Y, Z, C] -> [X, C, Y, Z]
    return np.ascontiguousarray(out, dtype=np.complex64)
