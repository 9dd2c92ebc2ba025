"""fastMRI HDF5 volumes: read, validate and write (one file per volume).

Layout (REFERENCE section 1):
  ``kspace``              complex64 ``[S, H, W]`` (single-coil) or ``[S, C, H, W]`` (multi-coil); H is the readout
                          (frequency-encoding) axis, W the phase-encoding axis (masks select columns of W).
  ``reconstruction_rss``  float32 ``[S, h, w]`` multi-coil target (RSS of the fully sampled coil images);
  ``reconstruction_esc``  float32 ``[S, h, w]`` single-coil target. Absent in test/challenge files,
                          which carry ``mask`` (length W) and attrs ``acceleration``, ``num_low_frequency``.
  ``ismrmrd_header``      XML: encoded/recon matrix sizes, encodingLimits of kspace_encoding_step_1.
  ``sens_maps``           (mrlearn extension, e.g. from ``mrlearn convert --maps``) complex64 ``[S, C, H, W]``.
  attrs                   ``max`` (target volume max), ``norm`` (L2 norm of the target volume), ``acquisition``,
                          ``patient_id``.
Submission files hold one dataset ``reconstruction`` float32 ``[S, h, w]``.

Every user-caused problem (missing file, not HDF5, truncated file, missing/ill-shaped/non-complex/non-finite
k-space, a mask that does not fit) raises :class:`mrlearn.errors.MrlearnError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mrlearn.errors import MrlearnError, input_error

TARGET_KEYS = ("reconstruction_rss", "reconstruction_esc")
SUBMISSION_KEY = "reconstruction"
ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"


@dataclass
class VolumeInfo:
    """Metadata of one fastMRI volume, read without touching the k-space samples.

    ``kspace_shape`` is the full stored shape (``[S, H, W]`` or ``[S, C, H, W]``); ``num_coils`` is None for
    single-coil files. ``recon_size`` ``(h, w)`` is the target's shape when the file has a target (as fastMRI's
    transforms crop to it), else the header's reconSpace matrix, else the full k-space matrix ``(H, W)``.
    ``encoding_size`` is the header's encodedSpace matrix ``(x, y, z)`` or the k-space ``(H, W, 1)`` without header.
    ``padding`` ``(left, right)``: columns ``[left, right)`` of W hold acquired data (fastMRI convention), None
    without header limits.
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

    @property
    def matrix_size(self) -> tuple[int, int]:
        """Stored k-space matrix ``(H, W)``."""
        return (int(self.kspace_shape[-2]), int(self.kspace_shape[-1]))


# ----------------------------------------------------------------------------------------------------- header
def make_ismrmrd_header(
    kspace_hw: tuple[int, int],
    recon_hw: tuple[int, int],
    enc_center: int | None = None,
    enc_max: int | None = None,
    fov_mm: tuple[float, float, float] | None = None,
) -> str:
    """A minimal valid ISMRMRD XML header for a 2-D Cartesian acquisition.

    ``kspace_hw`` = encoded matrix (readout x, phase y); ``recon_hw`` = recon matrix; ``enc_center``/``enc_max``
    are the encodingLimits of kspace_encoding_step_1 (default: all W columns acquired, centre ``W // 2``).
    ``fov_mm`` is the encoded field of view (default 1 mm per encoded sample); the recon FOV scales with the
    matrix ratio.
    """
    (h, w), (rh, rw) = (int(kspace_hw[0]), int(kspace_hw[1])), (int(recon_hw[0]), int(recon_hw[1]))
    center = w // 2 if enc_center is None else int(enc_center)
    maximum = w - 1 if enc_max is None else int(enc_max)
    fx, fy, fz = (float(h), float(w), 1.0) if fov_mm is None else tuple(float(v) for v in fov_mm)
    rfx, rfy = fx * rh / h, fy * rw / w

    def space(tag: str, mx: int, my: int, fovx: float, fovy: float) -> str:
        return (
            f"<{tag}><matrixSize><x>{mx}</x><y>{my}</y><z>1</z></matrixSize>"
            f"<fieldOfView_mm><x>{fovx:g}</x><y>{fovy:g}</y><z>{fz:g}</z></fieldOfView_mm></{tag}>"
        )

    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<ismrmrdHeader xmlns="{ISMRMRD_NS}">'
        "<experimentalConditions><H1resonanceFrequency_Hz>127000000</H1resonanceFrequency_Hz>"
        "</experimentalConditions>"
        "<encoding>"
        + space("encodedSpace", h, w, fx, fy)
        + space("reconSpace", rh, rw, rfx, rfy)
        + "<encodingLimits>"
        f"<kspace_encoding_step_1><minimum>0</minimum><maximum>{maximum}</maximum><center>{center}</center>"
        "</kspace_encoding_step_1>"
        "<kspace_encoding_step_2><minimum>0</minimum><maximum>0</maximum><center>0</center>"
        "</kspace_encoding_step_2>"
        "</encodingLimits><trajectory>cartesian</trajectory></encoding>"
        "</ismrmrdHeader>\n"
    )


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(node: ET.Element | None, *names: str) -> ET.Element | None:
    for name in names:
        if node is None:
            return None
        node = next((c for c in node if _local(c.tag) == name), None)
    return node


def _int(node: ET.Element | None) -> int | None:
    if node is None or node.text is None:
        return None
    return int(float(node.text.strip()))


def _triple(node: ET.Element | None, cast=int) -> tuple | None:
    if node is None:
        return None
    vals = [_child(node, a) for a in ("x", "y", "z")]
    if any(v is None or v.text is None for v in vals[:2]):
        return None
    return tuple(cast(float(v.text.strip())) for v in vals if v is not None and v.text is not None)


def parse_ismrmrd_header(xml: str | bytes, where: str | Path = "ismrmrd_header") -> dict[str, Any]:
    """Parse the fields mrlearn uses from an ISMRMRD XML header (namespace-agnostic; first ``encoding``).

    Returns ``encoding_size`` (x, y, z), ``recon_size`` (x, y, z), ``encoding_fov_mm``, ``recon_fov_mm`` (or None
    where absent) and ``enc_limits_center``/``enc_limits_max``/``enc_limits_min`` of kspace_encoding_step_1.
    """
    if isinstance(xml, bytes):
        xml = xml.decode("utf-8", errors="replace")
    try:
        root = ET.fromstring(str(xml).strip())
    except ET.ParseError as exc:
        raise input_error(where, f"ismrmrd_header is not valid XML ({exc})", "fix or delete the header dataset") from None
    enc = _child(root, "encoding")
    lims = _child(enc, "encodingLimits", "kspace_encoding_step_1")
    try:
        out = {
            "encoding_size": _triple(_child(enc, "encodedSpace", "matrixSize")),
            "recon_size": _triple(_child(enc, "reconSpace", "matrixSize")),
            "encoding_fov_mm": _triple(_child(enc, "encodedSpace", "fieldOfView_mm"), float),
            "recon_fov_mm": _triple(_child(enc, "reconSpace", "fieldOfView_mm"), float),
            "enc_limits_center": _int(_child(lims, "center")),
            "enc_limits_max": _int(_child(lims, "maximum")),
            "enc_limits_min": _int(_child(lims, "minimum")),
        }
    except ValueError as exc:
        raise input_error(where, f"ismrmrd_header has a non-numeric size or limit ({exc})", "fix the header") from None
    return out


def _padding(width: int, center: int | None, maximum: int | None) -> tuple[int, int] | None:
    """fastMRI: ``left = W // 2 - center``, ``right = left + maximum + 1``; None when absent or inconsistent."""
    if center is None or maximum is None:
        return None
    left = width // 2 - center
    right = left + maximum + 1
    if not (0 <= left < right <= width):
        return None
    return (int(left), int(right))


# ----------------------------------------------------------------------------------------------------- reading
@contextlib.contextmanager
def open_volume(path: str | Path) -> Iterator[h5py.File]:
    """Open a fastMRI file read-only, turning missing/non-HDF5/corrupt files into :class:`MrlearnError`."""
    path = Path(path)
    if not path.exists():
        raise input_error(path, "file not found", "check the path")
    if path.is_dir():
        raise input_error(path, "is a folder, expected a fastMRI .h5 file", "pass a file inside it")
    if not h5py.is_hdf5(path):
        raise input_error(path, "not an HDF5 file", "pass a fastMRI-format .h5 volume (or convert it with `mrlearn convert`)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise input_error(path, f"cannot open HDF5 file, truncated or corrupt ({_short(exc)})", "re-copy or re-download it") from None
    try:
        yield f
    except OSError as exc:
        raise input_error(path, f"cannot read HDF5 data, truncated or corrupt ({_short(exc)})", "re-copy or re-download it") from None
    finally:
        with contextlib.suppress(Exception):
            f.close()


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160]


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


def info_from_handle(f: h5py.File, path: str | Path) -> VolumeInfo:
    """Build and validate :class:`VolumeInfo` from an open file (metadata only, no k-space samples are read)."""
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
    single = len(shape) == 3

    target_key = next((k for k in TARGET_KEYS if k in f), None)
    target_hw = None
    if target_key is not None:
        tshape = tuple(int(s) for s in f[target_key].shape)
        if len(tshape) != 3 or tshape[0] != num_slices:
            raise input_error(path, f"'{target_key}' has shape {tshape}, expected [{num_slices}, h, w] (one image per k-space slice)",
                              "fix or remove the target dataset")
        target_hw = (tshape[1], tshape[2])

    has_mask = "mask" in f
    if has_mask:
        mshape = tuple(int(s) for s in f["mask"].shape)
        if int(np.prod(mshape)) != w or max(mshape, default=0) != w:
            raise input_error(path, f"'mask' has shape {mshape} but k-space width is {w}", "store a 1-D column mask of length W")

    has_maps = "sens_maps" in f
    if has_maps:
        mshape = tuple(int(s) for s in f["sens_maps"].shape)
        want = (num_slices, 1 if single else shape[1], h, w)
        if mshape != want:
            raise input_error(path, f"'sens_maps' has shape {mshape}, expected {want}", "store maps as [slices, coils, H, W]")

    attrs = {k: _attr(v) for k, v in f.attrs.items()}
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
        padding = _padding(w, hdr["enc_limits_center"], hdr["enc_limits_max"])
    if target_hw is not None:
        recon_size = target_hw
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

    ``kspace`` complex64 ``[C, H, W]`` (C = 1 for single-coil); ``target`` float32 ``[h, w]`` or None; ``mask``
    float32 ``[W]`` or None; ``sens_maps`` complex64 ``[C, H, W]`` or None (only when stored); metadata
    ``fname``, ``slice``, ``acquisition``, ``max``, ``recon_size``, ``padding``, ``single_coil``.
    """
    path = info.path
    i = _check_index(path, index, info.num_slices)
    kspace = np.asarray(f["kspace"][i], dtype=np.complex64)
    if info.single_coil:
        kspace = kspace[None]
    if not all_finite(kspace):
        raise input_error(path, f"k-space of slice {i} contains NaN or Inf", "fix or exclude this volume")
    target = None
    if info.target_key is not None:
        target = np.asarray(f[info.target_key][i], dtype=np.float32)
    mask = None
    if info.has_mask:
        mask = np.asarray(f["mask"][()], dtype=np.float32).reshape(-1)
    sens_maps = None
    if info.has_sens_maps:
        sens_maps = np.asarray(f["sens_maps"][i], dtype=np.complex64)
    vmax = info.attrs.get("max")
    return {
        "kspace": kspace,
        "target": target,
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
    """The whole k-space volume as complex64 ``[S, C, H, W]`` (C = 1 for single-coil), checked finite."""
    with open_volume(path) as f:
        info = info_from_handle(f, path)
        k = np.asarray(f["kspace"][()], dtype=np.complex64)
        if not all_finite(k):
            raise input_error(path, "k-space contains NaN or Inf", "fix or exclude this volume")
        return k[:, None] if info.single_coil else k


def read_sens_maps(path: str | Path) -> np.ndarray | None:
    """Stored ``sens_maps`` complex64 ``[S, C, H, W]``, or None when the file has none."""
    with open_volume(path) as f:
        info = info_from_handle(f, path)
        return np.asarray(f["sens_maps"][()], dtype=np.complex64) if info.has_sens_maps else None


def read_target(path: str | Path) -> np.ndarray:
    """The target volume float32 ``[S, h, w]`` (``reconstruction_rss`` or ``reconstruction_esc``)."""
    with open_volume(path) as f:
        key = next((k for k in TARGET_KEYS if k in f), None)
        if key is None:
            raise input_error(path, "no target dataset (reconstruction_rss / reconstruction_esc)",
                              "test/challenge files have no target; use validation files")
        return _read_3d(f, key, path)


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


# ----------------------------------------------------------------------------------------------------- writing
def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def _atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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
) -> Path:
    """Write a fastMRI-format volume atomically and return its path.

    ``kspace`` complex ``[S, H, W]`` (single-coil) or ``[S, C, H, W]`` (multi-coil), stored as complex64.
    ``target`` float ``[S, h, w]`` stored under ``target_key`` (default ``reconstruction_rss`` for 4-D k-space,
    ``reconstruction_esc`` for 3-D); attrs ``max``/``norm`` are computed from it. ``mask`` (length W) makes a
    test-style file (pass ``acceleration``/``num_low_frequency`` in ``attrs``). ``header`` is an ISMRMRD XML string
    (see :func:`make_ismrmrd_header`); without one, readers use the full matrix. ``sens_maps`` ``[S, C, H, W]``.
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
    if mask is not None:
        mask = np.asarray(mask).reshape(-1)
        if mask.shape[0] != w:
            raise input_error(path, f"mask length {mask.shape[0]} does not match k-space width {w}", "pass a length-W column mask")
    if sens_maps is not None:
        sens_maps = np.asarray(sens_maps, dtype=np.complex64)
        want = (s, 1 if kspace.ndim == 3 else kspace.shape[1], h, w)
        if sens_maps.shape != want:
            raise input_error(path, f"sens_maps shape {sens_maps.shape}, expected {want}", "pass [S, C, H, W] maps")
    key = target_key or ("reconstruction_rss" if kspace.ndim == 4 else "reconstruction_esc")
    with _atomic_h5(path) as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64, copy=False))
        if target is not None:
            f.create_dataset(key, data=target)
            f.attrs["max"] = float(target.max())
            f.attrs["norm"] = float(np.linalg.norm(target.astype(np.float64)))
        if mask is not None:
            f.create_dataset("mask", data=mask.astype(bool))
        if sens_maps is not None:
            f.create_dataset("sens_maps", data=sens_maps)
        if header is not None:
            f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode("utf-8")))
        f.attrs["acquisition"] = str(acquisition)
        f.attrs["patient_id"] = str(patient_id)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


def write_reconstruction(path: str | Path, recon: np.ndarray, attrs: dict[str, Any] | None = None) -> Path:
    """Write a fastMRI submission file (dataset ``reconstruction`` float32 ``[S, h, w]``) atomically."""
    path = Path(path)
    recon = np.asarray(recon)
    if recon.ndim != 3 or recon.dtype.kind == "c":
        raise MrlearnError(f"{path}: reconstruction must be real [slices, h, w], got {recon.dtype} {recon.shape}; "
                           "pass magnitude images with a slice axis")
    with _atomic_h5(path) as f:
        f.create_dataset(SUBMISSION_KEY, data=recon.astype(np.float32, copy=False))
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path
