"""Write fastMRI-format volumes and submission files atomically.

Each file is built in memory and its bytes written with :func:`mrlearn.io.atomic_write_bytes`: a full or read-only
disk is then a one-line error that leaves no partial file (HDF5 writing to such a disk itself fails in ways that
can crash the process at exit).

Layout as :mod:`mrlearn.data.fastmri`. A mask is stored as bool: ``[W]`` (columns), ``[H, W]`` (one 2-D pattern
for all slices) or ``[S, H, W]`` (one per slice).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mrlearn.errors import MrlearnError, input_error
from mrlearn.data.segmentation import LABELS_ATTR, SEGMENTATION_KEY, labels_to_json, segmentation_to_store
from mrlearn.io import atomic_write_bytes

SUBMISSION_KEY = "reconstruction"
NOISELESS_KEY = "reconstruction_noiseless"


def mask_layout_error(mshape: tuple[int, ...], s: int, h: int, w: int) -> str | None:
    """None when a mask of shape ``mshape`` fits k-space ``[S, (C), H, W]``, else what is wrong."""
    if len(mshape) >= 1 and int(np.prod(mshape)) == w and max(mshape) == w and mshape[-1] == w:
        return None  # [W], [1, W], [1, 1, W]
    if len(mshape) == 2 and mshape == (h, w):
        return None
    if len(mshape) == 3 and mshape in ((s, h, w), (1, h, w)):
        return None
    return f"'mask' has shape {mshape} but k-space width is {w} (height {h}, {s} slices)"


def write_volume(
    path: str | Path,
    kspace: np.ndarray,
    *,
    target: np.ndarray | None = None,
    target_key: str | None = None,
    acquisition: str,
    patient_id: str = "",
    mask: np.ndarray | None = None,
    header: str | None = None,
    attrs: dict[str, Any] | None = None,
    sens_maps: np.ndarray | None = None,
    noiseless: np.ndarray | None = None,
    segmentation: np.ndarray | None = None,
    segmentation_labels: dict[int, str] | None = None,
) -> Path:
    """Write a fastMRI-format volume atomically and return its path.

    ``kspace`` complex ``[S, H, W]`` (single-coil) or ``[S, C, H, W]`` (multi-coil), stored as complex64.
    ``target`` float ``[S, h, w]`` stored under ``target_key`` (default ``reconstruction_rss`` for 4-D k-space,
    ``reconstruction_esc`` for 3-D); attrs ``max``/``norm`` are computed from it. ``mask`` (``[W]``, ``[H, W]`` or
    ``[S, H, W]``) makes a test-style file (pass ``acceleration``/``num_low_frequency`` in ``attrs``). ``header``
    is an ISMRMRD XML string (see :func:`mrlearn.data.ismrmrd.make_ismrmrd_header`); without one, readers use the
    full matrix. ``sens_maps`` ``[S, C, H, W]``. ``noiseless`` float ``[S, h, w]``: the noiseless reference of a
    simulation, stored as ``reconstruction_noiseless`` (same shape as the target). ``segmentation`` integer (or
    integral float) class labels 0..255 ``[S, h, w]``, one per target pixel (same shape as the target), stored as
    uint8 dataset ``segmentation``; ``segmentation_labels`` ``{label: class name}`` (needs a segmentation), stored as
    the JSON attr ``segmentation_labels`` with string keys, e.g. ``'{"0": "background", "1": "csf"}'``.
    """
    path = Path(path)
    kspace = np.asarray(kspace)
    if kspace.ndim not in (3, 4) or kspace.dtype.kind != "c":
        raise input_error(path, f"k-space to write must be complex [S, H, W] or [S, C, H, W], got {kspace.dtype} {kspace.shape}",
                          "pass complex k-space with a slice axis")
    s, h, w = kspace.shape[0], kspace.shape[-2], kspace.shape[-1]
    if target is not None:
        target = np.asarray(target, dtype=np.float32)
        if target.ndim != 3 or target.shape[0] != s:
            raise input_error(path, f"target shape {target.shape} does not match {s} k-space slices", "pass [S, h, w]")
    if noiseless is not None:
        noiseless = np.asarray(noiseless, dtype=np.float32)
        if target is None or noiseless.shape != target.shape:
            raise input_error(path, f"noiseless reference shape {noiseless.shape} differs from the target's",
                              "pass it with a target of the same shape")
    if segmentation is not None:
        segmentation = segmentation_to_store(path, segmentation, None if target is None else target.shape)
    labels_json = None
    if segmentation_labels is not None:
        if segmentation is None:
            raise input_error(path, "segmentation_labels given without a segmentation", "pass both, or neither")
        labels_json = labels_to_json(path, segmentation_labels)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.ndim == 1 or (mask.ndim > 1 and int(np.prod(mask.shape[:-1])) == 1):
            mask = mask.reshape(-1)
        problem = mask_layout_error(tuple(mask.shape), s, h, w)
        if problem is not None:
            raise input_error(path, problem, "pass a column mask [W] or a 2-D mask [H, W] / [S, H, W]")
    if sens_maps is not None:
        sens_maps = np.asarray(sens_maps, dtype=np.complex64)
        want = (s, 1 if kspace.ndim == 3 else kspace.shape[1], h, w)
        if sens_maps.shape != want:
            raise input_error(path, f"sens_maps shape {sens_maps.shape}, expected {want}", "pass [S, C, H, W] maps")
    key = target_key or ("reconstruction_rss" if kspace.ndim == 4 else "reconstruction_esc")
    buf = io.BytesIO()  # built in memory: HDF5 never meets a full or read-only disk itself
    with h5py.File(buf, "w") as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64, copy=False))
        if target is not None:
            f.create_dataset(key, data=target)
            f.attrs["max"] = float(target.max())
            f.attrs["norm"] = float(np.linalg.norm(target.astype(np.float64)))
        if noiseless is not None:
            f.create_dataset(NOISELESS_KEY, data=noiseless)
        if segmentation is not None:
            f.create_dataset(SEGMENTATION_KEY, data=segmentation)
        if mask is not None:
            f.create_dataset("mask", data=mask.astype(bool))
        if sens_maps is not None:
            f.create_dataset("sens_maps", data=sens_maps)
        if header is not None:
            f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode("utf-8")))
        f.attrs["acquisition"] = str(acquisition)
        f.attrs["patient_id"] = str(patient_id)
        if labels_json is not None:
            f.attrs[LABELS_ATTR] = labels_json
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    atomic_write_bytes(path, buf.getbuffer())
    return path


def write_reconstruction(path: str | Path, recon: np.ndarray, attrs: dict[str, Any] | None = None,
                         segmentation: np.ndarray | None = None) -> Path:
    """Write a fastMRI submission file (dataset ``reconstruction`` float32 ``[S, h, w]``) atomically; with
    ``segmentation`` (integer labels 0..255 of the reconstruction's shape) also the uint8 dataset ``segmentation``."""
    path = Path(path)
    recon = np.asarray(recon)
    if recon.ndim != 3 or recon.dtype.kind == "c":
        raise MrlearnError(f"{path}: reconstruction must be real [slices, h, w], got {recon.dtype} {recon.shape}; "
                           "pass magnitude images with a slice axis")
    if segmentation is not None:
        segmentation = segmentation_to_store(path, segmentation, recon.shape)
    buf = io.BytesIO()  # built in memory: HDF5 never meets a full or read-only disk itself
    with h5py.File(buf, "w") as f:
        f.create_dataset(SUBMISSION_KEY, data=recon.astype(np.float32, copy=False))
        if segmentation is not None:
            f.create_dataset(SEGMENTATION_KEY, data=segmentation)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    atomic_write_bytes(path, buf.getbuffer())
    return path
