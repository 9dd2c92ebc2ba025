"""Volume read/write of the public API: fastMRI HDF5 files as plain numpy arrays.

:func:`read_volume` returns a dict: ``kspace`` ``[S, C, H, W]`` complex64 (single-coil files get ``C = 1``),
``mask`` (``[W]``, ``[H, W]``, ``[S, H, W]`` as stored, or None), ``target`` ``[S, h, w]`` float32 or None,
``segmentation`` ``[S, h, w]`` uint8 class labels (the target's shape) or None, ``segmentation_labels``
``{label: class name}`` ({} when absent) and ``patient_id`` (str, "" when absent).
:func:`write_volume` is :func:`mrlearn.data.fastmri_write.write_volume` (atomic; ``segmentation=`` and
``segmentation_labels=`` store the two above).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def read_volume(path: str | Path) -> dict[str, Any]:
    """``{"kspace", "mask", "target", "segmentation", "segmentation_labels", "patient_id"}`` of a fastMRI-format
    file (see the module docstring)."""
    from mrlearn.data.fastmri import (read_kspace, read_mask, read_segmentation, read_segmentation_labels,
                                      read_target, read_volume_info)
    from mrlearn.errors import MrlearnError, input_error

    if not isinstance(path, (str, Path)) or not str(path):
        raise input_error("read_volume", f"{path!r} is not a file path", "pass the path of a fastMRI .h5 file")

    kspace = np.asarray(read_kspace(path)).astype(np.complex64, copy=False)
    kspace = kspace[:, None] if kspace.ndim == 3 else kspace
    try:
        target = np.asarray(read_target(path), dtype=np.float32)
    except MrlearnError:
        target = None
    return {"kspace": kspace, "mask": read_mask(path), "target": target, "segmentation": read_segmentation(path),
            "segmentation_labels": read_segmentation_labels(path), "patient_id": read_volume_info(path).patient_id}


def write_volume(path: str | Path, kspace: np.ndarray, **kwargs: Any) -> Path:
    """Write a fastMRI-format file atomically (keywords of :func:`mrlearn.data.fastmri_write.write_volume`), after the
    checks a reader makes: k-space finite, not all zero, within float32; target and noiseless reference finite."""
    from mrlearn.data.checks import check_kspace
    from mrlearn.data.fastmri_write import write_volume as _write
    from mrlearn.errors import input_error

    if kspace is None or np.size(kspace) == 0:
        raise input_error(path, "no k-space to write (None or empty)", "pass complex k-space [S, C, H, W]")
    check_kspace(path, np.asarray(kspace))
    for key in ("target", "noiseless"):
        value = kwargs.get(key)
        if value is not None and not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            raise input_error(path, f"{key} contains NaN or Inf; not written", f"pass a finite {key}")

    kwargs.setdefault("acquisition", "unknown")
    return _write(path, kspace, **kwargs)
