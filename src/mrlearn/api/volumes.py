"""Volume read/write of the public API: fastMRI HDF5 files as plain numpy arrays.

:func:`read_volume` returns a dict: ``kspace`` ``[S, C, H, W]`` complex64 (single-coil files get ``C = 1``),
``mask`` (``[W]``, ``[H, W]``, ``[S, H, W]`` as stored, or None), ``target`` ``[S, h, w]`` float32 or None.
:func:`write_volume` is :func:`mrlearn.data.fastmri_write.write_volume` (atomic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def read_volume(path: str | Path) -> dict[str, Any]:
    """``{"kspace", "mask", "target"}`` of a fastMRI-format file (see the module docstring)."""
    from mrlearn.data.fastmri import read_kspace, read_mask, read_target
    from mrlearn.errors import MrlearnError

    kspace = np.asarray(read_kspace(path)).astype(np.complex64, copy=False)
    kspace = kspace[:, None] if kspace.ndim == 3 else kspace
    try:
        target = np.asarray(read_target(path), dtype=np.float32)
    except MrlearnError:
        target = None
    return {"kspace": kspace, "mask": read_mask(path), "target": target}


def write_volume(path: str | Path, kspace: np.ndarray, **kwargs: Any) -> Path:
    """Write a fastMRI-format file atomically (keywords of :func:`mrlearn.data.fastmri_write.write_volume`)."""
    from mrlearn.data.fastmri_write import write_volume as _write

    kwargs.setdefault("acquisition", "unknown")
    return _write(path, kspace, **kwargs)
