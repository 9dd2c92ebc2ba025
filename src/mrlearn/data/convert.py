"""Convert between BART ``.cfl/.hdr`` arrays and fastMRI-format HDF5 volumes (one volume per file).

Axis mapping: BART k-space ``[X, Y, 1, C, 1, ..., S]`` (X readout = dim 0, Y phase encoding = dim 1, coils =
dim 3, slices = dim 13 SLICE_DIM, absent = one slice) <-> fastMRI ``kspace[S, C, H=X, W=Y]``. Other layouts
(``[1, ky, kz, coils]`` slices of a 3-D acquisition, coils in dim 4, coils or slices left in dim 2, 3-D k-space)
are detected and converted as :mod:`mrlearn.data.bart_layout` describes (``dim2`` states what dim 2 holds where
the data cannot tell), or refused with the BART command that fixes them; the layout used is stored in the attr
``bart_layout``. Sensitivity maps ``[X, Y, 1, C, M, ..., S or 1]`` (M =
ESPIRiT map sets, the first is kept) follow the k-space's layout and are stored as ``sens_maps[S, C, H, W]``
complex64. Single-coil k-space without maps becomes a single-coil file (``kspace[S, H, W]``, target
``reconstruction_esc``). Both sides use the same sample values; mrlearn's transforms apply the centered
orthonormal FFT, so BART users should compare with ``bart fft -u -i 3``.

Converted files carry no ISMRMRD header: readers use the full matrix. The default target is the RSS (or the
magnitude, single-coil) of the centered orthonormal inverse FFT of the full matrix, no crop. ``undersampled=True``
instead stores the sampling pattern found in the data (where any coil is non-zero) as ``mask``: ``[W]`` when whole
columns are sampled, else 2-D ``[H, W]`` (``[S, H, W]`` when slices differ), with attrs ``acceleration`` and
``num_low_frequency`` (and ``calibration_box`` for 2-D) computed from it (a test-style file without target).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

from mrlearn.data import cfl as bart
from mrlearn.data.bart_layout import Layout, detect_layout, maps_layout, to_scwh
from mrlearn.data.checks import check_kspace, check_mask_values, check_matrix
from mrlearn.data.fastmri import read_kspace, read_sens_maps, read_volume_info, write_volume
from mrlearn.data.sampling import describe_pattern, sampled_points, simplify_pattern
from mrlearn.errors import input_error
from mrlearn.physics.fft import ifft2c

_H5_SUFFIXES = (".h5", ".hdf5")
LOOKS_UNDERSAMPLED = 0.75  # below this sampled fraction a conversion without --undersampled prints a note
Log = Callable[[str], None]


def _coil_image_target(kspace_scwh: np.ndarray) -> np.ndarray:
    """RSS over coils of the centered orthonormal inverse FFT, float32 ``[S, H, W]``."""
    img = ifft2c(torch.from_numpy(kspace_scwh))
    return torch.sqrt((img.abs() ** 2).sum(dim=1)).numpy().astype(np.float32)


def read_bart_kspace(path: str | Path, log: Log | None = None, dim2: str | None = None) -> tuple[np.ndarray, Layout]:
    """A BART k-space as complex64 ``[S, C, H, W]`` and the :class:`Layout` it was read with (checked: finite,
    not all zero, no float32 overflow, a matrix of at least 8 x 8). ``dim2``: see :func:`detect_layout`."""
    src = bart.cfl_base(path)
    a = bart.pad_dims(bart.read_cfl(src))
    if not np.isfinite(a.view(np.float32)).all():
        raise input_error(src, "k-space contains NaN or Inf", "fix the data before converting")
    check_kspace(src, a)  # before the layout is judged from the data's energy (unchanged by the orthonormal FFTs)
    layout = detect_layout(a, src, dim2)
    if layout.note and log is not None:
        log(f"{src}: {layout.note}")
    k = to_scwh(a, layout)
    check_matrix(src, k.shape[2], k.shape[3])
    return k, layout


def bart_to_fastmri(
    kspace_path: str | Path,
    out_path: str | Path,
    *,
    maps_path: str | Path | None = None,
    acquisition: str = "BART",
    patient_id: str = "",
    undersampled: bool = False,
    dim2: str | None = None,
    log: Log | None = None,
) -> Path:
    """Convert one BART k-space (and optional maps) to a fastMRI-format ``.h5`` (see module docstring)."""
    src = bart.cfl_base(kspace_path)
    k, layout = read_bart_kspace(src, log, dim2)
    s, c, h, w = k.shape
    maps = None
    if maps_path is not None:
        mbase = bart.cfl_base(maps_path)
        ma = bart.pad_dims(bart.read_cfl(mbase))
        extra = [d for d in range(bart.BART_DIMS) if d not in (0, 1, 2, 3, 4, bart.SLICE_DIM) and ma.shape[d] != 1]
        if extra:
            raise input_error(mbase, f"sensitivity maps have extra BART dims {extra}", "pass maps [X, Y, Z, C, M, ..., S]")
        m = to_scwh(ma, maps_layout(layout, ma.shape), transform=False)
        if m.shape[1:] != (c, h, w) or m.shape[0] not in (1, s):
            raise input_error(mbase, f"maps have shape [S, C, H, W] = {list(m.shape)}, k-space has {[s, c, h, w]}",
                              "pass maps computed from this k-space (e.g. bart ecalib -m1)")
        maps = np.ascontiguousarray(np.broadcast_to(m, (s, c, h, w)))
    single = c == 1 and maps is None
    target, mask, attrs = None, None, {"bart_layout": layout.label}
    if undersampled:
        mask = simplify_pattern(sampled_points(k))
        check_mask_values(f"{src} (sampling pattern found in the data)", mask)
        attrs.update(describe_pattern(mask))
    else:
        frac = float(sampled_points(k).mean())
        if frac < LOOKS_UNDERSAMPLED and log is not None:
            log(f"{src}: only {100 * frac:.0f} % of k-space is non-zero, as in undersampled data; the target is "
                "computed from it as if fully sampled (pass --undersampled to store the sampling pattern instead)")
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
    dim2: str | None = None,
    log: Log | None = None,
) -> list[Path]:
    """Convert a file or a folder; the direction follows the input (BART -> fastMRI or fastMRI -> BART).

    Folder of BART arrays -> folder of ``NAME.h5``; a ``NAME_maps`` array beside ``NAME`` (or ``maps/NAME`` when
    ``maps`` is a folder) is taken as its sensitivity maps. Folder of ``.h5`` -> folder of ``NAME`` BART arrays
    (plus ``NAME_maps`` where maps are stored). Returns the paths written. ``log`` receives one line per input
    whose layout was not BART's standard one (what was done with it). ``dim2`` applies to every BART input.
    """
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        return _convert_folder(src, dst, maps, acquisition, patient_id, undersampled, dim2, log)
    if _is_bart(src):
        name = bart.cfl_base(src).name
        return [bart_to_fastmri(src, _out_file(dst, name, ".h5"), maps_path=maps, acquisition=acquisition,
                                patient_id=patient_id or name, undersampled=undersampled, dim2=dim2, log=log)]
    if src.exists() and _is_h5(src):
        _refuse_bart_only_options(maps, dim2)
        return fastmri_to_bart(src, _out_file(dst, src.stem, ""))
    if not src.exists():
        raise input_error(src, "not found (no such file, folder or BART .hdr)", "check the path")
    raise input_error(src, "neither a BART .cfl/.hdr pair nor an HDF5 file", "pass BART k-space, a fastMRI .h5 or a folder of them")


def _refuse_bart_only_options(maps: str | Path | None, dim2: str | None) -> None:
    """--maps and --dim2 describe BART input; a fastMRI input takes neither."""
    if maps is not None:
        raise input_error("--maps", "only used when converting BART to fastMRI", "stored maps are written as <output>_maps")
    if dim2 is not None:
        raise input_error("--dim2", "only used when converting BART to fastMRI", "leave it out for .h5 input")


def _convert_folder(src: Path, dst: Path, maps, acquisition: str, patient_id: str, undersampled: bool,
                    dim2: str | None, log: Log | None) -> list[Path]:
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
        _refuse_bart_only_options(maps, dim2)
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
                                       patient_id=patient_id or name, undersampled=undersampled, dim2=dim2,
                                       log=log))
    return written
