"""Checks of input data, each failing with a one-line :class:`MrlearnError` that names the file.

* file names must be valid UTF-8 (they seed masks and name outputs);
* files that cannot be opened are told apart: not readable (permissions), locked by a writer (HDF5 file lock),
  truncated or corrupt;
* the k-space matrix must be at least :data:`MIN_MATRIX` on each side; a recon size may not exceed twice the
  k-space matrix (checked before anything of that size is allocated);
* k-space must be finite, not all zero, and small enough that the centered orthonormal FFT and the RSS stay
  finite in float32. Data that would overflow are *refused*, never silently rescaled: by Parseval every coil
  image pixel is bounded by the slice's k-space L2 norm, and the RSS squares those pixels, so a slice is refused
  when its energy ``sum |k|^2`` (accumulated in float32) exceeds :data:`MAX_KSPACE_ENERGY` or overflows;
* a mask must sample at least 2 % of k-space (:data:`mrlearn.data.sampling.MIN_SAMPLED_FRACTION`).
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from mrlearn.data.sampling import MIN_SAMPLED_FRACTION, sampled_fraction
from mrlearn.errors import MrlearnError, input_error

MIN_MATRIX = 8
#: float32 max is 3.4e38; 1e36 leaves a factor ~300 of headroom for the squares the RSS and solvers form.
MAX_KSPACE_ENERGY = 1e36


def show_path(path: str | Path) -> str:
    """``path`` as printable text (bytes that are not UTF-8 shown as ``\\xNN``)."""
    return os.fsencode(str(path)).decode("utf-8", errors="backslashreplace")


def check_name(path: str | Path) -> None:
    """Refuse a file name that is not valid UTF-8."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise input_error(show_path(path), "file name is not valid UTF-8", "rename the file (UTF-8 letters only)") from None


def open_error(path: str | Path, exc: OSError, doing: str = "open") -> MrlearnError:
    """A one-line error for an ``OSError`` raised while opening or reading an HDF5 file."""
    where = show_path(path)
    text = " ".join(str(exc).split())[:160]
    code = getattr(exc, "errno", None)
    if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return input_error(where, "file is not readable (permission denied)", "fix its permissions (chmod u+r)")
    if isinstance(exc, BlockingIOError) or code in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock file" in text:
        return input_error(where, "file is locked by another process that has it open for writing (HDF5 file lock)",
                           "wait until the writer has finished and closed it, then retry")
    return input_error(where, f"cannot {doing} HDF5 file, truncated or corrupt ({text})", "re-copy or re-download it")


def check_readable(path: Path) -> None:
    """Refuse a file this process may not read (before h5py reports it as 'not HDF5')."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise open_error(path, exc) from None


def check_cache_mb(value: Any, where: str = "cache_mb") -> float:
    """``value`` as a finite size in MB (>= 0), else a one-line error naming ``where``."""
    try:
        size = float(value)
    except (TypeError, ValueError):
        size = math.nan
    if isinstance(value, bool) or not (size >= 0 and math.isfinite(size)):
        raise input_error(where, f"{value!r} is not a size in MB", "use 0 (no cache) or a positive number")
    return size


def check_matrix(path: str | Path, h: int, w: int) -> None:
    """Refuse k-space matrices smaller than ``MIN_MATRIX`` on a side."""
    if h < MIN_MATRIX or w < MIN_MATRIX:
        raise input_error(show_path(path), f"k-space matrix {h} x {w} is too small to reconstruct",
                          f"use data with at least {MIN_MATRIX} x {MIN_MATRIX} samples")


def check_recon_size(where: str | Path, recon: tuple[int, int], matrix: tuple[int, int], what: str = "recon size") -> None:
    """Refuse a recon size that is not positive or exceeds twice the k-space matrix ``(H, W)`` on a side."""
    (rh, rw), (h, w) = recon, matrix
    if rh < 1 or rw < 1 or rh > 2 * h or rw > 2 * w:
        raise input_error(show_path(where), f"{what} {rh} x {rw} does not fit the k-space matrix {h} x {w}",
                          f"use a recon size of at most {2 * h} x {2 * w} (e.g. {min(h, w)} x {min(h, w)})")


def check_max_attr(path: str | Path, value: Any) -> float | None:
    """The ``max`` attr as a float; a non-numeric or non-finite one is an error."""
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise input_error(show_path(path), f"attribute 'max' is not a number ({str(value)[:40]!r})",
                          "fix or delete the attribute (it is the target volume's maximum)") from None
    if not math.isfinite(out):
        raise input_error(show_path(path), f"attribute 'max' is {out}", "fix or delete the attribute")
    return out


def kspace_energy(kspace: np.ndarray) -> float:
    """``sum |k|^2`` accumulated in float32 (inf when it overflows, nan with NaN entries)."""
    flat = np.ascontiguousarray(kspace).reshape(-1)
    flat = flat.view(np.float32) if flat.dtype == np.complex64 else np.asarray(flat, dtype=np.complex64).view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.dot(flat, flat))


def check_kspace(path: str | Path, kspace: np.ndarray, what: str = "k-space", mask: np.ndarray | None = None) -> None:
    """Refuse non-finite, all-zero or overflowing k-space (see the module docstring); ``mask`` (broadcastable
    to ``kspace``) also refuses files whose data are zero at every sampled position."""
    where = show_path(path)
    energy = kspace_energy(kspace)
    if math.isnan(energy) or (math.isinf(energy) and not np.isfinite(kspace).all()):
        raise input_error(where, f"{what} contains NaN or Inf", "fix or exclude this volume")
    if energy > MAX_KSPACE_ENERGY:
        peak = float(np.abs(kspace).max())
        raise input_error(where, f"{what} is too large for float32 (peak |k| {peak:.3g}, energy sum |k|^2 > "
                                 f"{MAX_KSPACE_ENERGY:.0e}): the FFT/RSS would overflow; refused, not rescaled",
                          "divide the k-space by a constant (e.g. scale it to a peak near 1)")
    if energy == 0.0:
        if np.any(kspace != 0):  # float32 squares underflow below ~1e-23: not zero data, data far too small
            peak = float(np.abs(np.asarray(kspace, dtype=np.complex128)).max())
            raise input_error(where, f"{what} is too small for float32 (peak |k| {peak:.3g}): its energy underflows "
                                     "to zero", "multiply the k-space by a constant (e.g. scale it to a peak near 1)")
        raise input_error(where, f"{what} is all zero", "exclude this volume or check the conversion")
    if mask is not None and kspace_energy(kspace * np.asarray(mask, dtype=np.float32)) == 0.0:
        raise input_error(where, f"{what} holds no data at the sampled positions of its mask",
                          "the mask does not belong to this k-space; fix or remove the 'mask' dataset")


def check_links(f: Any, path: str | Path) -> None:
    """Refuse an open HDF5 file whose top-level entries are soft or external links (data elsewhere, or nowhere)."""
    import h5py

    for key in f:
        link = f.get(key, getlink=True)
        if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
            kind = "an external link to another file" if isinstance(link, h5py.ExternalLink) else "a soft link"
            raise input_error(show_path(path), f"'{key}' is {kind}, not data stored in this file",
                              "store the data in the file itself (e.g. copy it with h5py or h5copy)")


def check_mask_values(path: str | Path, mask: np.ndarray) -> None:
    """Refuse a mask that is not 0/1 (a weighted mask would rescale the data), of zeros, or that samples less than
    2 % of k-space."""
    values = np.asarray(mask)
    where = show_path(path)
    odd = values[(values != 0) & (values != 1)]
    if odd.size:
        raise input_error(where, f"'mask' is not binary (holds {odd.flat[0]:g})", "store a 0/1 or bool mask (mask != 0)")
    m = values != 0
    if not m.any():
        raise input_error(where, "'mask' samples nothing (all zeros)", "fix or remove the 'mask' dataset")
    frac = sampled_fraction(m)
    if frac < MIN_SAMPLED_FRACTION:
        raise input_error(where, f"'mask' samples {100 * frac:.2g} % of k-space, below {100 * MIN_SAMPLED_FRACTION:g} %",
                          "too little data to reconstruct; use a denser mask")


def check_binary_mask(where: str | Path, mask: np.ndarray, slice_axis: bool = False) -> None:
    """Refuse a sampling mask with NaN/Inf, values other than 0 and 1 (a weighted mask would rescale the data), or no
    sample (in any slice, when ``slice_axis``: the first axis indexes slices)."""
    m = np.asarray(mask, dtype=np.float64)
    name = show_path(where)
    if not np.isfinite(m).all():
        raise input_error(name, "mask contains NaN or Inf", "pass a 0/1 mask")
    odd = m[(m != 0) & (m != 1)]
    if odd.size:
        raise input_error(name, f"mask is not binary (holds {odd.flat[0]:g}): a weighted mask would rescale the data",
                          "pass a 0/1 mask (e.g. mask != 0)")
    empty = (m.reshape(m.shape[0], -1).max(axis=1) == 0).any() if slice_axis and m.ndim > 1 else not m.any()
    if empty:
        raise input_error(name, "mask samples nothing (all zeros)" + (" in a slice" if slice_axis else ""),
                          "pass the sampling mask of the data")


#: a reconstruction whose energy differs from the zero-filled image's by more than this factor (either way) is
#: refused: the zero-filled image holds the acquired k-space energy (Parseval), which a reconstruction of the same
#: data keeps to within a small factor; 100x more or less means diverged or collapsed weights.
ENERGY_FACTOR = 100.0


def check_reconstruction(where: str | Path, pred: Any, method: str, todo: str, zero_filled: Any = None) -> None:
    """Refuse a reconstruction with NaN/Inf, or (with ``zero_filled``) one whose l2 norm is over ``ENERGY_FACTOR``
    times above or below the zero-filled image's; one line naming ``where`` and ``method``."""
    pred = np.asarray(pred)
    bad = int(np.size(pred) - np.count_nonzero(np.isfinite(pred)))
    if bad:
        raise input_error(where, f"the reconstruction by {method} holds NaN or Inf ({bad} of {np.size(pred)} pixels); "
                          "not written", todo)
    if zero_filled is not None:
        ref = float(np.linalg.norm(np.asarray(zero_filled, np.float64)))
        ratio = float(np.linalg.norm(np.asarray(pred, np.float64))) / ref if ref > 0 else 1.0
        if not 1.0 / ENERGY_FACTOR <= ratio <= ENERGY_FACTOR:
            raise input_error(where, f"the reconstruction by {method} has {ratio:.3g} times the norm of the zero-filled "
                              "image (a reconstruction of the same data stays near 1); not written", todo)
