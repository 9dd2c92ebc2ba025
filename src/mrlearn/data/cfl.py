"""BART ``.cfl``/``.hdr`` files.

A BART array is two files with a common base name: ``NAME.hdr`` (text; the line after ``# Dimensions`` lists the
dimensions) and ``NAME.cfl`` (raw complex64, little-endian, interleaved real/imaginary, column-major: the first
dimension varies fastest). BART's dimension order (``misc/mri.h``): 0 READ (readout), 1 PHS1 (phase encoding),
2 PHS2 (partition), 3 COIL, 4 MAPS, 5 TE, ..., 10 TIME, ..., 13 SLICE, 14 AVG; 16 dimensions in all.

:func:`read_cfl` returns an array whose numpy shape equals the header dimensions with trailing singleton
dimensions dropped (``arr[x, y, z, c]`` indexes like BART); :func:`write_cfl` writes any array, column-major.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrlearn.errors import input_error
from mrlearn.io import atomic_write_bytes, atomic_write_text

READ_DIM, PHS1_DIM, PHS2_DIM, COIL_DIM, MAPS_DIM, TE_DIM, TIME_DIM, SLICE_DIM = 0, 1, 2, 3, 4, 5, 10, 13
BART_DIMS = 16


def cfl_base(path: str | Path) -> Path:
    """Base name of a BART array: ``x``, ``x.cfl`` and ``x.hdr`` all give ``x``."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".cfl", ".hdr") else path


def read_cfl_dims(path: str | Path) -> tuple[int, ...]:
    """Dimensions listed in ``NAME.hdr`` (all of them, trailing ones included)."""
    hdr = cfl_base(path).with_name(cfl_base(path).name + ".hdr")
    if not hdr.is_file():
        raise input_error(hdr, "BART header not found", "pass the base name of a .cfl/.hdr pair")
    try:
        lines = hdr.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise input_error(hdr, f"cannot read ({exc.strerror})", "check permissions") from None
    for i, line in enumerate(lines):
        if line.strip().startswith("# Dimensions") and i + 1 < len(lines):
            try:
                dims = tuple(int(v) for v in lines[i + 1].split())
            except ValueError:
                break
            if dims and all(d >= 1 for d in dims):
                return dims
            break
    raise input_error(hdr, "no valid '# Dimensions' line", "this is not a BART header")


def read_cfl(path: str | Path) -> np.ndarray:
    """Read a BART array as complex64 with numpy shape = header dims (trailing singleton dims dropped)."""
    base = cfl_base(path)
    dims = read_cfl_dims(base)
    cfl = base.with_name(base.name + ".cfl")
    if not cfl.is_file():
        raise input_error(cfl, "BART data file not found", "the .cfl must sit beside its .hdr")
    n = int(np.prod(dims))
    size = cfl.stat().st_size
    if size != 8 * n:
        raise input_error(cfl, f"holds {size} bytes but the header dims {list(dims)} need {8 * n} (complex64)",
                          "the file is truncated or does not belong to this header")
    data = np.fromfile(cfl, dtype="<c8", count=n)
    keep = len(dims)
    while keep > 1 and dims[keep - 1] == 1:
        keep -= 1
    return data.reshape(dims[:keep], order="F").astype(np.complex64, copy=False)


def write_cfl(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` (any shape, cast to complex64) as ``NAME.hdr`` + ``NAME.cfl``, atomically; returns the base."""
    base = cfl_base(path)
    arr = np.asarray(array, dtype=np.complex64)
    dims = list(arr.shape) or [1]
    # data first, header last: a header names a whole .cfl (full or read-only disk: one line, no partial file)
    atomic_write_bytes(base.with_name(base.name + ".cfl"), arr.astype("<c8").tobytes(order="F"))
    atomic_write_text(base.with_name(base.name + ".hdr"), "# Dimensions\n" + " ".join(str(d) for d in dims) + " \n")
    return base


def pad_dims(array: np.ndarray, ndim: int = BART_DIMS) -> np.ndarray:
    """View of ``array`` with trailing singleton dims appended up to ``ndim`` (BART arrays are 16-D)."""
    if array.ndim > ndim:
        raise ValueError(f"array has {array.ndim} dims, BART supports {ndim}")
    return array.reshape(array.shape + (1,) * (ndim - array.ndim))
