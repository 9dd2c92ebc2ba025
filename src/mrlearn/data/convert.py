"""Convert between BART ``.cfl/.hdr`` arrays and fastMRI-format HDF5 volumes (one volume per file).

Axis mapping (BART dims, see :mod:`mrlearn.data.cfl`): BART k-space ``[X, Y, 1, C, 1, ..., S]`` (X readout = dim 0,
Y phase encoding = dim 1, coils = dim 3, slices = dim 13 SLICE_DIM, absent = one slice) <-> fastMRI
``kspace[S, C, H=X, W=Y]``. Sensitivity maps ``[X, Y, 1, C, M, ..., S or 1]`` (M = ESPIRiT map sets, the first
is kept) are stored as ``sens_maps[S, C, H, W]`` complex64. Single-coil k-space without maps becomes a single-coil
file (``kspace[S, H, W]``, target ``reconstruction_esc``). Both sides use the same sample values; mrlearn's
transforms apply the centered orthonormal FFT, so BART users should compare with ``bart fft -u -i 3``.

Converted files carry no ISMRMRD header: readers use the full matrix. The default target is the RSS (or the
magnitude, single-coil) of the centered orthonormal inverse FFT of the full matrix, no crop; ``undersampled=True``
instead stores the acquired columns as ``mask`` (a test-style file without target).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from mrlearn.data import cfl as bart
from mrlearn.data.fastmri import read_kspace, read_sens_maps, read_volume_info, write_volume
from mrlearn.errors import input_error
from mrlearn.physics.fft import ifft2c

_KEPT_KSPACE_DIMS = (bart.READ_DIM, bart.PHS1_DIM, bart.COIL_DIM, bart.SLICE_DIM)
_H5_SUFFIXES = (".h5", ".hdf5")


def _bart_to_scwh(arr: np.ndarray, where: Path, what: str, allow_maps: bool = False) -> np.ndarray:
    """BART ``[X, Y, 1, C, (M), ..., S]`` -> ``[S, C, X, Y]`` (first map set when ``allow_maps``)."""
    a = bart.pad_dims(arr)
    if a.shape[bart.PHS2_DIM] != 1:
        raise input_error(where, f"{what} is 3-D (BART dim 2 = {a.shape[bart.PHS2_DIM]})",
                          "inverse-FFT the partition axis (bart fft -u -i 4) and move it to the slice dim (bart transpose 2 13)")
    kept = _KEPT_KSPACE_DIMS + ((bart.MAPS_DIM,) if allow_maps else ())
    extra = [d for d in range(bart.BART_DIMS) if d not in kept and a.shape[d] != 1]
    if extra:
        raise input_error(where, f"{what} has extra BART dims {extra} with sizes {[a.shape[d] for d in extra]}",
                          "select one echo/time point/average first (e.g. bart slice), keeping dims 0, 1, 3 and 13")
    index = tuple(slice(None) if d in _KEPT_KSPACE_DIMS else 0 for d in range(bart.BART_DIMS))
    sel = a[index]  # [X, Y, C, S]
    return np.ascontiguousarray(np.transpose(sel, (3, 2, 0, 1)))


def _coil_image_target(kspace_scwh: np.ndarray) -> np.ndarray:
    """RSS over coils of the centered orthonormal inverse FFT, float32 ``[S, H, W]``."""
    img = ifft2c(torch.from_numpy(kspace_scwh))
    return torch.sqrt((img.abs() ** 2).sum(dim=1)).numpy().astype(np.float32)


def _acquired_columns(kspace_scwh: np.ndarray) -> np.ndarray:
    return np.any(kspace_scwh != 0, axis=(0, 1, 2))


def _centre_run(mask: np.ndarray) -> int:
    """Length of the contiguous run of acquired columns through the centre column ``W // 2``."""
    c = mask.shape[0] // 2
    if not mask[c]:
        return 0
    left = c
    while left > 0 and mask[left - 1]:
        left -= 1
    right = c
    while right < mask.shape[0] - 1 and mask[right + 1]:
        right += 1
    return right - left + 1


def bart_to_fastmri(
    kspace_path: str | Path,
    out_path: str | Path,
    *,
    maps_path: str | Path | None = None,
    acquisition: str = "BART",
    patient_id: str = "",
    undersampled: bool = False,
) -> Path:
    """Convert one BART k-space (and optional maps) to a fastMRI-format ``.h5`` (see module docstring)."""
    src = bart.cfl_base(kspace_path)
    k = _bart_to_scwh(bart.read_cfl(src), src, "k-space")
    if not np.isfinite(k.view(np.float32)).all():
        raise input_error(src, "k-space contains NaN or Inf", "fix the data before converting")
    s, c, h, w = k.shape
    maps = None
    if maps_path is not None:
        mbase = bart.cfl_base(maps_path)
        m = _bart_to_scwh(bart.read_cfl(mbase), mbase, "sensitivity maps", allow_maps=True)
        if m.shape[1:] != (c, h, w) or m.shape[0] not in (1, s):
            raise input_error(mbase, f"maps have shape [S, C, H, W] = {list(m.shape)}, k-space has {[s, c, h, w]}",
                              "pass maps computed from this k-space (e.g. bart ecalib -m1)")
        maps = np.ascontiguousarray(np.broadcast_to(m, (s, c, h, w)))
    single = c == 1 and maps is None
    target, mask, attrs = None, None, {}
    if undersampled:
        cols = _acquired_columns(k)
        if not cols.any():
            raise input_error(src, "k-space is all zero", "check the input")
        mask = cols
        attrs = {"acceleration": float(w / cols.sum()), "num_low_frequency": int(_centre_run(cols))}
    else:
        target = _coil_image_target(k)
    return write_volume(
        out_path,
        k[:, 0] if single else k,
        target=target,
        acquisition=acquisition,
        patient_id=patient_id,
        mask=mask,
        attrs=attrs,
        sens_maps=maps,
    )


def _scwh_to_bart(arr: np.ndarray) -> np.ndarray:
    """``[S, C, H, W]`` -> BART ``[H, W, 1, C, 1, ..., S]`` (slice dim 13 only when S > 1)."""
    s, c, h, w = arr.shape
    out = np.transpose(arr, (2, 3, 1, 0)).reshape(h, w, 1, c, s)
    if s == 1:
        return out[..., 0]
    return out.reshape((h, w, 1, c) + (1,) * (bart.SLICE_DIM - 4) + (s,))


def fastmri_to_bart(h5_path: str | Path, out_path: str | Path, *, maps_out: str | Path | None = None) -> list[Path]:
    """Write a fastMRI volume's k-space (and stored ``sens_maps``) as BART arrays; returns the base names written.

    Maps go to ``maps_out`` (default ``<out>_maps``) when the file holds ``sens_maps``.
    """
    h5_path = Path(h5_path)
    info = read_volume_info(h5_path)
    k = read_kspace(h5_path)
    out = bart.cfl_base(out_path)
    written = [bart.write_cfl(out, _scwh_to_bart(k))]
    if info.has_sens_maps:
        maps = read_sens_maps(h5_path)
        mbase = bart.cfl_base(maps_out) if maps_out is not None else out.with_name(out.name + "_maps")
        written.append(bart.write_cfl(mbase, _scwh_to_bart(maps)))
    return written


def _is_bart(path: Path) -> bool:
    base = bart.cfl_base(path)
    return base.with_name(base.name + ".hdr").is_file()


def _is_h5(path: Path) -> bool:
    return path.is_file() and (path.suffix.lower() in _H5_SUFFIXES or h5py.is_hdf5(path))


def _out_file(dst: Path, name: str, suffix: str) -> Path:
    if dst.is_dir() or str(dst).endswith(("/", "\\")):
        return dst / (name + suffix)
    return dst if suffix == "" or dst.suffix == suffix else dst.with_name(dst.name + suffix)


def convert_path(
    src: str | Path,
    dst: str | Path,
    *,
    maps: str | Path | None = None,
    acquisition: str = "BART",
    patient_id: str = "",
    undersampled: bool = False,
) -> list[Path]:
    """Convert a file or a folder; the direction follows the input (BART -> fastMRI or fastMRI -> BART).

    Folder of BART arrays -> folder of ``NAME.h5``; a ``NAME_maps`` array beside ``NAME`` (or ``maps/NAME`` when
    ``maps`` is a folder) is taken as its sensitivity maps. Folder of ``.h5`` -> folder of ``NAME`` BART arrays
    (plus ``NAME_maps`` where maps are stored). Returns the paths written.
    """
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        return _convert_folder(src, dst, maps, acquisition, patient_id, undersampled)
    if _is_bart(src):
        name = bart.cfl_base(src).name
        return [bart_to_fastmri(src, _out_file(dst, name, ".h5"), maps_path=maps, acquisition=acquisition,
                                patient_id=patient_id or name, undersampled=undersampled)]
    if src.exists() and _is_h5(src):
        if maps is not None:
            raise input_error("--maps", "only used when converting BART to fastMRI", "stored maps are written as <output>_maps")
        return fastmri_to_bart(src, _out_file(dst, src.stem, ""))
    if not src.exists():
        raise input_error(src, "not found (no such file, folder or BART .hdr)", "check the path")
    raise input_error(src, "neither a BART .cfl/.hdr pair nor an HDF5 file", "pass BART k-space, a fastMRI .h5 or a folder of them")


def _convert_folder(src: Path, dst: Path, maps, acquisition: str, patient_id: str, undersampled: bool) -> list[Path]:
    h5s = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in _H5_SUFFIXES)
    hdrs = sorted(p for p in src.iterdir() if p.is_file() and p.suffix == ".hdr")
    if not h5s and not hdrs:
        raise input_error(src, "folder holds no .h5 files and no BART .cfl/.hdr arrays", "point to a folder of volumes")
    if h5s and hdrs:
        raise input_error(src, "folder mixes .h5 files and BART arrays", "convert one kind at a time (separate folders)")
    if dst.exists() and not dst.is_dir():
        raise input_error(dst, "exists and is not a folder", "give an output folder when converting a folder")
    dst.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if h5s:
        if maps is not None:
            raise input_error("--maps", "only used when converting BART to fastMRI", "stored maps are written as NAME_maps")
        for p in h5s:
            written += fastmri_to_bart(p, dst / p.stem)
        return written
    names = {p.stem for p in hdrs}
    maps_dir = Path(maps) if maps is not None else None
    if maps_dir is not None and not maps_dir.is_dir():
        raise input_error(maps_dir, "must be a folder when the input is a folder", "put NAME.cfl/.hdr maps in one folder")
    for name in sorted(names):
        if name.endswith("_maps") and name[: -len("_maps")] in names:
            continue
        mpath = None
        if maps_dir is not None:
            if not _is_bart(maps_dir / name):
                raise input_error(maps_dir, f"no maps '{name}.hdr' for k-space '{name}'", "give maps for every k-space file")
            mpath = maps_dir / name
        elif name + "_maps" in names:
            mpath = src / (name + "_maps")
        written.append(bart_to_fastmri(src / name, dst / (name + ".h5"), maps_path=mpath, acquisition=acquisition,
                                       patient_id=patient_id or name, undersampled=undersampled))
    return written
