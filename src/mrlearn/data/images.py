"""Read user images (not k-space) as stacks of 2-D slices: NIfTI, BART image arrays, fastMRI target files.

Each input file gives one :class:`ImageVolume` with ``images`` ``[S, H, W]`` (float32 magnitude or complex64):

* NIfTI (``.nii``, ``.nii.gz``, read with nibabel): voxel axes ``[i, j, k]``; slices along k, image plane
  ``[i, j]`` (H = i, W = j); 2-D files are one slice; a 4-D file must have one volume. Real data are magnitudes
  (negative values are refused), complex data keep their phase. ``pixel_mm`` is the in-plane voxel size.
* BART image arrays (``NAME.cfl``/``NAME.hdr``): ``[X, Y, Z]`` (H = X, W = Y, slices along Z) or
  ``[X, Y, 1, 1, ..., S]`` with slices in dim 13; coil-combined (dim 3 of size 1), complex.
* fastMRI files holding ``reconstruction_rss`` or ``reconstruction_esc`` ``[S, h, w]`` (magnitude); their
  ``acquisition`` attr is kept.
A folder is read file by file (sorted by name). Every problem is a one-line :class:`MrlearnError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrlearn.data import cfl as bart
from mrlearn.data.checks import check_matrix, check_name, check_readable, show_path
from mrlearn.errors import input_error

NIFTI_SUFFIXES = (".nii", ".nii.gz")
H5_SUFFIXES = (".h5", ".hdf5")


@dataclass
class ImageVolume:
    """One input volume: ``images`` ``[S, H, W]`` float32 (magnitude) or complex64; ``name`` the file's stem;
    ``pixel_mm`` in-plane pixel size or None when the file does not say; ``acquisition`` or None."""

    name: str
    path: Path
    images: np.ndarray
    pixel_mm: float | None = None
    acquisition: str | None = None

    @property
    def is_complex(self) -> bool:
        return self.images.dtype.kind == "c"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz",) + NIFTI_SUFFIXES + H5_SUFFIXES + (".cfl", ".hdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _finish(path: Path, images: np.ndarray, **kw) -> ImageVolume:
    where = show_path(path)
    if images.ndim != 3 or min(images.shape) < 1:
        raise input_error(where, f"image data have shape {images.shape}", "pass 2-D images or a 3-D stack of slices")
    check_matrix(path, int(images.shape[1]), int(images.shape[2]))
    if images.dtype.kind == "c":
        images = np.ascontiguousarray(images, dtype=np.complex64)
        values = images.view(np.float32)
    else:
        if images.dtype.kind not in "fiub":
            raise input_error(where, f"image data are {images.dtype}, not numbers", "pass magnitude or complex images")
        images = images.astype(np.float32)
        values = images
        if (values < 0).any():
            raise input_error(where, "real images with negative values (not magnitudes)",
                              "pass magnitude images, or complex images that keep the phase")
    if not np.isfinite(values).all():
        raise input_error(where, "images contain NaN or Inf", "fix the images first")
    if not np.any(values != 0):
        raise input_error(where, "images are all zero", "pass images of an object")
    return ImageVolume(name=_stem(path), path=path, images=np.ascontiguousarray(images), **kw)


def read_nifti(path: Path) -> ImageVolume:
    """A NIfTI magnitude or complex image (see the module docstring)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except (OSError, ValueError, EOFError) as exc:  # nibabel reports bad files as ImageFileError (a ValueError)
        raise input_error(show_path(path), f"cannot read NIfTI ({' '.join(str(exc).split())[:120]})",
                          "pass a valid .nii/.nii.gz file") from None
    if data.dtype.names is not None:
        raise input_error(show_path(path), "NIfTI holds RGB/structured voxels", "convert it to one channel first")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise input_error(show_path(path), f"NIfTI has {data.ndim} dims (shape {data.shape})",
                          "pass one 3-D volume (e.g. pick one volume with `fslroi IN OUT 0 1`)")
    pixel = float(np.mean(zooms[:2])) if len(zooms) >= 2 and all(z > 0 for z in zooms[:2]) else None
    return _finish(path, np.moveaxis(data, 2, 0), pixel_mm=pixel)


def read_bart_images(path: Path) -> ImageVolume:
    """A BART coil-combined image array (see the module docstring)."""
    base = bart.cfl_base(path)
    a = bart.pad_dims(bart.read_cfl(base))
    extra = [d for d in range(bart.BART_DIMS) if d not in (0, 1, 2, bart.SLICE_DIM) and a.shape[d] != 1]
    if extra:
        todo = ("combine the coils first (`bart rss 8 IN OUT`, or a coil-combined recon)" if extra == [bart.COIL_DIM]
                else f"select one entry of each first (e.g. `bart slice {extra[0]} 0 IN OUT`)")
        raise input_error(base, f"image has data in BART dims {extra} (sizes {[a.shape[d] for d in extra]})", todo)
    if a.shape[2] > 1 and a.shape[bart.SLICE_DIM] > 1:
        raise input_error(base, "image has slices in both dim 2 and dim 13", "convert one slab at a time (`bart slice 13 0 IN OUT`)")
    index = tuple(slice(None) if d in (0, 1, 2, bart.SLICE_DIM) else 0 for d in range(bart.BART_DIMS))
    v = a[index]  # [X, Y, Z, S]
    v = v[:, :, :, 0] if a.shape[bart.SLICE_DIM] == 1 else v[:, :, 0, :]
    return _finish(base, np.moveaxis(v, 2, 0))


def read_target_images(path: Path) -> ImageVolume:
    """The target of a fastMRI file (``reconstruction_rss``/``reconstruction_esc``) as magnitude slices."""
    from mrlearn.data.fastmri import open_volume, read_target

    images = read_target(path)
    with open_volume(path) as f:
        acq = f.attrs.get("acquisition")
    acq = acq.decode("utf-8", "replace") if isinstance(acq, bytes) else (str(acq) if acq is not None else None)
    return _finish(path, images, acquisition=acq or None)


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(H5_SUFFIXES):
        return "h5"
    if name.endswith(".hdr") and (path.with_suffix(".cfl")).exists():
        return "bart"
    if name.endswith(".cfl") or (not path.exists() and path.with_name(path.name + ".hdr").is_file()):
        return "bart"
    return None


def read_image_volume(path: str | Path) -> ImageVolume:
    """Read one image file of any supported kind."""
    path = Path(path)
    check_name(path)
    kind = _kind(path)
    if kind is None:
        raise input_error(show_path(path), "not an image file mrlearn reads",
                          "pass NIfTI (.nii, .nii.gz), a BART image (.cfl/.hdr) or a fastMRI .h5 with a target")
    if kind != "bart":
        if not path.is_file():
            raise input_error(show_path(path), "file not found", "check the path")
        check_readable(path)
    return {"nifti": read_nifti, "bart": read_bart_images, "h5": read_target_images}[kind](path)


def list_image_files(src: str | Path) -> list[Path]:
    """The image files of a folder (sorted; a BART pair counted once), or ``[src]`` for a file/BART base name."""
    src = Path(src)
    check_name(src)
    if src.is_dir():
        files = sorted((p for p in src.iterdir() if p.is_file() and _kind(p) in ("nifti", "h5")
                        or (p.suffix == ".hdr" and _kind(p) == "bart")), key=lambda p: p.name)
        if not files:
            raise input_error(src, "folder holds no images (.nii, .nii.gz, BART .cfl/.hdr, fastMRI .h5)",
                              "point to a folder of image files")
        names = [_stem(p) for p in files]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise input_error(src, f"two inputs would both be written as {dup[0]}.h5", "rename one of them")
        return files
    if src.exists() or _kind(src) == "bart":
        return [src]
    raise input_error(src, "not found", "check the path")
