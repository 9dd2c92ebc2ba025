"""fastMRI HDF5 volumes: read and validate (one file per volume); writing lives in :mod:`fastmri_write`.

Layout (fastMRI's files, Zbontar et al. 2018):
  ``kspace``              complex64 ``[S, H, W]`` (single-coil) or ``[S, C, H, W]`` (multi-coil); H is the readout
                          (frequency-encoding) axis, W the phase-encoding axis (1-D masks select columns of W).
  ``reconstruction_rss``  float32 ``[S, h, w]`` multi-coil target (RSS of the fully sampled coil images);
  ``reconstruction_esc``  float32 ``[S, h, w]`` single-coil target. Absent in test/challenge files,
                          which carry ``mask`` and attrs ``acceleration``, ``num_low_frequency``.
  ``mask``                bool/0-1: ``[W]`` (columns, fastMRI), or 2-D ``[H, W]`` (all slices) / ``[S, H, W]``
                          (per slice), e.g. a Poisson-disc acquisition converted with ``mrlearn convert``.
  ``reconstruction_noiseless`` (mrlearn extension, simulated files) float32 ``[S, h, w]``: the target without noise.
  ``segmentation``        (mrlearn extension, simulated files) uint8 ``[S, h, w]``, the target's shape: one integer
                          class label per target pixel; attr ``segmentation_labels`` names the classes, a JSON
                          string mapping label (as a string) to name, e.g. ``'{"0": "background", "1": "csf"}'``.
  ``ismrmrd_header``      XML: encoded/recon matrix sizes, encodingLimits of kspace_encoding_step_1.
  ``sens_maps``           (mrlearn extension, e.g. from ``mrlearn convert --maps``) complex64 ``[S, C, H, W]``.
  attrs                   ``max`` (target volume max), ``norm`` (L2 norm of the target volume), ``acquisition``,
                          ``patient_id``, ``segmentation_labels`` (above).
Submission files hold one dataset ``reconstruction`` float32 ``[S, h, w]``.

Every user-caused problem (see :mod:`mrlearn.data.checks`: missing, unreadable, locked, non-HDF5 or truncated file,
non-UTF-8 name, missing/ill-shaped/non-complex/non-finite/all-zero/overflowing k-space, a matrix too small, a mask
that does not fit or samples (almost) nothing, a recon size beyond the matrix, a non-numeric ``max``) raises
:class:`mrlearn.errors.MrlearnError` naming the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mrlearn.data import checks, segmentation
from mrlearn.data.fastmri_write import (  # noqa: F401  (re-exported: the one import place for fastMRI I/O)
    NOISELESS_KEY,
    SUBMISSION_KEY,
    mask_layout_error,
    write_reconstruction,
    write_volume,
)
from mrlearn.data.ismrmrd import (  # noqa: F401  (re-exported)
    ISMRMRD_NS,
    make_ismrmrd_header,
    padding_from_limits,
    parse_ismrmrd_header,
)
from mrlearn.errors import input_error

TARGET_KEYS = ("reconstruction_rss", "reconstruction_esc")


@dataclass
class VolumeInfo:
    """Metadata of one fastMRI volume, read without touching the k-space samples.

    ``kspace_shape`` is the full stored shape (``[S, H, W]`` or ``[S, C, H, W]``); ``num_coils`` is None for
    single-coil files. ``recon_size`` ``(h, w)`` is the target's shape when the file has a target (as fastMRI's
    transforms crop to it), else the header's reconSpace matrix, else the full k-space matrix ``(H, W)``.
    ``encoding_size`` is the header's encodedSpace matrix ``(x, y, z)`` or the k-space ``(H, W, 1)`` without header.
    ``padding`` ``(left, right)``: columns ``[left, right)`` of W hold acquired data (fastMRI convention), None
    without header limits. ``mask_shape``: the stored mask's shape normalised to ``(W,)``, ``(H, W)`` or
    ``(S, H, W)`` (None without mask). ``has_noiseless``: the file stores ``reconstruction_noiseless``;
    ``has_segmentation``: it stores ``segmentation`` (validated: integer, the target's shape).
    """

    path: Path
    num_slices: int
    kspace_shape: tuple[int, ...]
    num_coils: int | None
    single_coil: bool
    acquisition: str
    patient_id: str
    recon_size: tuple[int, int]
    encoding_size: tuple[int, ...]
    padding: tuple[int, int] | None
    target_key: str | None
    has_mask: bool
    has_sens_maps: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)
    mask_shape: tuple[int, ...] | None = None
    has_noiseless: bool = False
    has_segmentation: bool = False

    @property
    def matrix_size(self) -> tuple[int, int]:
        """Stored k-space matrix ``(H, W)``."""
        return (int(self.kspace_shape[-2]), int(self.kspace_shape[-1]))


# ----------------------------------------------------------------------------------------------------- reading
@contextlib.contextmanager
def open_volume(path: str | Path) -> Iterator[h5py.File]:
    """Open a fastMRI file read-only, turning every unusable file into a one-line :class:`MrlearnError`."""
    path = Path(path)
    checks.check_name(path)
    if not path.exists():
        raise input_error(path, "file not found", "check the path")
    if path.is_dir():
        raise input_error(path, "is a folder, expected a fastMRI .h5 file", "pass a file inside it")
    checks.check_readable(path)
    if not h5py.is_hdf5(path):
        raise input_error(path, "not an HDF5 file", "pass a fastMRI-format .h5 volume (or convert it with `mrlearn convert`)")
    f = open_h5(path)
    try:
        yield f
    except OSError as exc:
        raise checks.open_error(path, exc, "read") from None
    finally:
        with contextlib.suppress(Exception):
            f.close()


def open_h5(path: str | Path) -> h5py.File:
    """``h5py.File(path, "r")`` with open errors (permissions, a writer's lock, corruption) as one line; a top-level
    HDF5 soft or external link is refused (its data live elsewhere, or nowhere)."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise checks.open_error(path, exc) from None
    try:
        checks.check_links(f, path)
    except Exception:
        f.close()
        raise
    return f


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _header_text(f: h5py.File) -> str | None:
    if "ismrmrd_header" not in f:
        return None
    raw = f["ismrmrd_header"][()]
    if isinstance(raw, np.ndarray):
        raw = raw.item() if raw.size == 1 else b"".join(raw.ravel().tolist())
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)


def _image_shape(f: h5py.File, key: str, path: Path, num_slices: int) -> tuple[int, int]:
    tshape = tuple(int(s) for s in f[key].shape)
    if len(tshape) != 3 or tshape[0] != num_slices:
        raise input_error(path, f"'{key}' has shape {tshape}, expected [{num_slices}, h, w] (one image per k-space slice)",
                          "fix or remove the dataset")
    return (tshape[1], tshape[2])


def _mask_shape(f: h5py.File, path: Path, s: int, h: int, w: int) -> tuple[int, ...]:
    """Validate the stored mask (layout and values) and return its normalised shape ``(W,)``/``(H, W)``/``(S, H, W)``."""
    ds = f["mask"]
    mshape = tuple(int(v) for v in ds.shape)
    problem = mask_layout_error(mshape, s, h, w)
    if problem is not None:
        raise input_error(path, problem, "store a column mask [W] or a 2-D mask [H, W] / [S, H, W]")
    if ds.dtype.kind not in "biuf":
        raise input_error(path, f"'mask' is {ds.dtype}, not numbers", "store a 0/1 or bool mask")
    values = np.asarray(ds[()])
    if not np.isfinite(values).all():
        raise input_error(path, "'mask' contains NaN or Inf", "store a 0/1 or bool mask")
    if values.ndim == 3 and values.shape[0] == s and s > 1:
        for i in range(s):
            checks.check_mask_values(f"{path} (mask of slice {i})", values[i])
    else:
        checks.check_mask_values(path, values)
    if int(np.prod(mshape)) == w:
        return (w,)
    return (h, w) if len(mshape) == 2 or mshape[0] == 1 else (s, h, w)


def info_from_handle(f: h5py.File, path: str | Path) -> VolumeInfo:
    """Build and validate :class:`VolumeInfo` from an open file (metadata and mask only, no k-space samples)."""
    path = Path(path)
    if "kspace" not in f or not isinstance(f["kspace"], h5py.Dataset):
        raise input_error(path, "no 'kspace' dataset", "this is not a fastMRI raw-data file (targets-only files go to --target)")
    ks = f["kspace"]
    shape = tuple(int(s) for s in ks.shape)
    if len(shape) not in (3, 4):
        raise input_error(path, f"'kspace' has rank {len(shape)} (shape {shape}), expected [slices, H, W] or [slices, coils, H, W]",
                          "store one 2-D slice stack per file")
    if ks.dtype.kind != "c":
        raise input_error(path, f"'kspace' is {ks.dtype}, not complex", "store complex64 k-space (real and imaginary parts)")
    if min(shape) < 1:
        raise input_error(path, f"'kspace' is empty (shape {shape})", "pass a file with at least one slice")
    num_slices, h, w = shape[0], shape[-2], shape[-1]
    checks.check_matrix(path, h, w)
    single = len(shape) == 3

    target_key = next((k for k in TARGET_KEYS if k in f), None)
    target_hw = _image_shape(f, target_key, path, num_slices) if target_key is not None else None
    has_noiseless = NOISELESS_KEY in f
    if has_noiseless and _image_shape(f, NOISELESS_KEY, path, num_slices) != target_hw:
        raise input_error(path, f"'{NOISELESS_KEY}' does not have the target's shape", "fix or remove it")
    has_segmentation = segmentation.SEGMENTATION_KEY in f
    if has_segmentation:
        segmentation.check_stored(path, f[segmentation.SEGMENTATION_KEY], None if target_hw is None else (num_slices, *target_hw))

    has_mask = "mask" in f
    mask_shape = _mask_shape(f, path, num_slices, h, w) if has_mask else None

    has_maps = "sens_maps" in f
    if has_maps:
        mshape = tuple(int(s) for s in f["sens_maps"].shape)
        want = (num_slices, 1 if single else shape[1], h, w)
        if mshape != want:
            raise input_error(path, f"'sens_maps' has shape {mshape}, expected {want}", "store maps as [slices, coils, H, W]")

    attrs = {k: _attr(v) for k, v in f.attrs.items()}
    if "max" in attrs:
        attrs["max"] = checks.check_max_attr(path, attrs["max"])
    if segmentation.LABELS_ATTR in attrs:
        segmentation.labels_from_json(path, attrs[segmentation.LABELS_ATTR])  # an unreadable attr fails up front
    header = _header_text(f)
    hdr = parse_ismrmrd_header(header, where=path) if header else None
    encoding_size: tuple[int, ...] = (h, w, 1)
    recon_size: tuple[int, int] = (h, w)
    padding = None
    if hdr is not None:
        if hdr["encoding_size"]:
            encoding_size = tuple(hdr["encoding_size"])
        if hdr["recon_size"]:
            recon_size = (int(hdr["recon_size"][0]), int(hdr["recon_size"][1]))
        padding = padding_from_limits(w, hdr["enc_limits_center"], hdr["enc_limits_max"])
    if target_hw is not None:
        recon_size = target_hw
    checks.check_recon_size(path, recon_size, (h, w), "recon size (ismrmrd_header reconSpace or target)")
    return VolumeInfo(
        path=path,
        num_slices=num_slices,
        kspace_shape=shape,
        num_coils=None if single else shape[1],
        single_coil=single,
        acquisition=str(attrs.get("acquisition", "") or ""),
        patient_id=str(attrs.get("patient_id", "") or ""),
        recon_size=recon_size,
        encoding_size=encoding_size,
        padding=padding,
        target_key=target_key,
        has_mask=has_mask,
        has_sens_maps=has_maps,
        attrs=attrs,
        mask_shape=mask_shape,
        has_noiseless=has_noiseless,
        has_segmentation=has_segmentation,
    )


def read_volume_info(path: str | Path) -> VolumeInfo:
    """Read and validate the metadata of a fastMRI volume (shapes, header, attrs) without loading k-space."""
    with open_volume(path) as f:
        return info_from_handle(f, path)


def _check_index(path: Path, index: int, num_slices: int) -> int:
    i = int(index)
    if i < 0:
        i += num_slices
    if not 0 <= i < num_slices:
        raise input_error(path, f"slice {index} out of range (the volume has {num_slices} slices)", f"use 0..{num_slices - 1}")
    return i


def all_finite(x: np.ndarray) -> bool:
    """True when no entry of ``x`` is NaN or +-Inf.

    Fast path: one float32 sum over the real/imaginary parts (NaN and Inf propagate into it); only when the sum
    is not finite (NaN/Inf present, or an overflow of huge finite values) is every entry checked.
    """
    flat = np.ascontiguousarray(x).view(np.float32 if x.dtype == np.complex64 else x.real.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(flat.sum()):
            return True
    return bool(np.isfinite(flat).all())


def read_slice_from_handle(f: h5py.File, info: VolumeInfo, index: int) -> dict[str, Any]:
    """The raw sample (docs/architecture.md) of slice ``index`` from an open file with known ``info``.

    ``kspace`` complex64 ``[C, H, W]`` (C = 1 for single-coil); ``target`` float32 ``[h, w]`` or None;
    ``target_noiseless`` float32 ``[h, w]`` and ``segmentation`` uint8 ``[h, w]`` (class labels) or None (simulated
    files); ``mask`` float32 ``[W]`` or ``[H, W]`` (this slice's 2-D pattern) or None; ``sens_maps`` complex64
    ``[C, H, W]`` or None (only when stored); metadata ``fname``, ``slice``, ``acquisition``, ``max``,
    ``recon_size``, ``padding``, ``single_coil``.
    The k-space is checked (:func:`mrlearn.data.checks.check_kspace`): finite, not all zero, no float32 overflow,
    and, with a mask, holding data at the sampled positions.
    """
    path = info.path
    i = _check_index(path, index, info.num_slices)
    kspace = np.asarray(f["kspace"][i], dtype=np.complex64)
    if info.single_coil:
        kspace = kspace[None]
    mask = None
    if info.has_mask:
        ds = f["mask"]
        raw = ds[i] if len(info.mask_shape or ()) == 3 else ds[()]
        mask = np.asarray(raw, dtype=np.float32).reshape(info.mask_shape[-2:] if len(info.mask_shape or ()) >= 2 else (-1,))
    checks.check_kspace(path, kspace, f"k-space of slice {i}", mask)
    target = None
    if info.target_key is not None:
        target = np.asarray(f[info.target_key][i], dtype=np.float32)
    noiseless = np.asarray(f[NOISELESS_KEY][i], dtype=np.float32) if info.has_noiseless else None
    seg = segmentation.stored_to_uint8(path, f[segmentation.SEGMENTATION_KEY][i]) if info.has_segmentation else None
    sens_maps = None
    if info.has_sens_maps:
        sens_maps = np.asarray(f["sens_maps"][i], dtype=np.complex64)
    vmax = info.attrs.get("max")
    return {
        "kspace": kspace,
        "target": target,
        "target_noiseless": noiseless,
        "segmentation": seg,
        "mask": mask,
        "sens_maps": sens_maps,
        "fname": path.name,
        "slice": i,
        "acquisition": info.acquisition,
        "max": None if vmax is None else float(vmax),
        "recon_size": tuple(info.recon_size),
        "padding": info.padding,
        "single_coil": info.single_coil,
    }


def read_slice(path: str | Path, index: int) -> dict[str, Any]:
    """Open ``path``, validate it and return the raw sample of slice ``index`` (see :func:`read_slice_from_handle`)."""
    with open_volume(path) as f:
        info = info_from_handle(f, path)
        return read_slice_from_handle(f, info, index)


def read_kspace(path: str | Path) -> np.ndarray:
    """The whole k-space volume as complex64 ``[S, C, H, W]`` (C = 1 for single-coil), checked per slice as
    :func:`read_slice_from_handle` does (finite, not all zero, no float32 overflow)."""
    with open_volume(path) as f:
        info = info_from_handle(f, path)
        k = np.asarray(f["kspace"][()], dtype=np.complex64)
        if not all_finite(k):
            raise input_error(path, "k-space contains NaN or Inf", "fix or exclude this volume")
        for i in range(k.shape[0]):
            checks.check_kspace(path, k[i], f"k-space of slice {i}")
        return k[:, None] if info.single_coil else k


def read_mask(path: str | Path) -> np.ndarray | None:
    """The stored mask as float32 ``[W]``, ``[H, W]`` or ``[S, H, W]`` (validated), or None without one."""
    with open_volume(path) as f:
        info = info_from_handle(f, path)
        if not info.has_mask:
            return None
        return np.asarray(f["mask"][()], dtype=np.float32).reshape(info.mask_shape)


def read_sens_maps(path: str | Path) -> np.ndarray | None:
    """Stored ``sens_maps`` complex64 ``[S, C, H, W]``, or None when the file has none."""
    with open_volume(path) as f:
        info = info_from_handle(f, path)
        return np.asarray(f["sens_maps"][()], dtype=np.complex64) if info.has_sens_maps else None


def read_target(path: str | Path, noiseless: bool = False) -> np.ndarray:
    """The target volume float32 ``[S, h, w]`` (``reconstruction_rss`` or ``reconstruction_esc``; with
    ``noiseless`` the simulated ``reconstruction_noiseless``)."""
    with open_volume(path) as f:
        if noiseless:
            if NOISELESS_KEY not in f:
                raise input_error(path, f"no '{NOISELESS_KEY}' dataset", "only files made by `mrlearn simulate` have one")
            return _read_3d(f, NOISELESS_KEY, path)
        key = next((k for k in TARGET_KEYS if k in f), None)
        if key is None:
            raise input_error(path, "no target dataset (reconstruction_rss / reconstruction_esc)",
                              "test/challenge files have no target; use validation files")
        return _read_3d(f, key, path)


def read_segmentation(path: str | Path) -> np.ndarray | None:
    """The stored class labels uint8 ``[S, h, w]`` (the target's shape), or None when the file has none."""
    with open_volume(path) as f:
        info = info_from_handle(f, path)
        if not info.has_segmentation:
            return None
        return segmentation.stored_to_uint8(path, f[segmentation.SEGMENTATION_KEY][()])


def read_segmentation_labels(path: str | Path) -> dict[int, str]:
    """``{label: class name}`` from the JSON attr ``segmentation_labels`` ({} when absent)."""
    with open_volume(path) as f:
        raw = f.attrs.get(segmentation.LABELS_ATTR)
        return {} if raw is None else segmentation.labels_from_json(path, raw)


def read_reconstruction(path: str | Path) -> np.ndarray:
    """A submission-format reconstruction float32 ``[S, h, w]`` (dataset ``reconstruction``)."""
    with open_volume(path) as f:
        if SUBMISSION_KEY not in f:
            raise input_error(path, f"no '{SUBMISSION_KEY}' dataset", "pass a fastMRI submission-format file")
        return _read_3d(f, SUBMISSION_KEY, path)


def _read_3d(f: h5py.File, key: str, path: str | Path) -> np.ndarray:
    arr = f[key]
    if arr.ndim != 3:
        raise input_error(path, f"'{key}' has shape {tuple(arr.shape)}, expected [slices, h, w]", "store one image per slice")
    if arr.dtype.kind not in "fiu":
        raise input_error(path, f"'{key}' is {arr.dtype}, expected real magnitude images", "store float32 magnitudes")
    return np.asarray(arr[()], dtype=np.float32)
