"""Anatomies as tissue-fraction fields in millimetres; the MNI ICBM152 2009 head built from nilearn's templates.

An :class:`Anatomy` answers ``fractions(points)``: for points ``[..., 3]`` given as (x, y, z) in mm in RAS+
orientation (x to the subject's right... left-to-right, y posterior-to-anterior, z inferior-to-superior, as MNI
space), it returns float32 tissue fractions ``[T, ...]`` in the order of :data:`tissue.TISSUES` (air = 1 - sum).

The MNI head (:func:`mni_anatomy`) is built offline from the templates that ship inside the nilearn wheel
(ICBM152 2009a nonlinear symmetric: T1, grey-matter and white-matter probability maps, brain mask; loaded with
``nilearn.datasets.load_mni152_*`` -- no download):

* grey and white matter = the GM / WM probability maps; CSF = brain mask minus GM minus WM (clipped to [0, 1]).
* The T1 template nilearn ships is brain-extracted (zero outside the brain mask), so the tissues outside the brain
  cannot be read from its intensity. They are built as shells at a distance ``d`` (mm) outside the brain mask:
  extra-axial CSF (0-3 mm), skull bone (3-9 mm), muscle (9-11 mm, thickening to 17 mm laterally, like the temporalis
  muscle), subcutaneous fat (5 mm), then air. Shell boundaries are 1 mm linear ramps (partial volume). Below the
  brain stem the shells simply close the head; there is no neck.
* The template is left-right symmetric: sagittal slices at x and -x are mirror images (the dataset builder uses
  x >= 0 only, so no split sees the mirror of another's slice).

The field is stored as uint8 fractions on a 2 mm grid (block mean of the 1 mm templates) or, for fine matrices,
on the native 1 mm grid, and sampled with trilinear interpolation.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod

import numpy as np
from scipy import ndimage

from mrlearn.data.simulate.tissue import TISSUE_INDEX, TISSUE_NAMES


class Anatomy(ABC):
    """A 3-D tissue-fraction field in mm (MNI-like RAS+ frame)."""

    name: str = "anatomy"
    symmetric_x: bool = False  # True when the field is mirror-symmetric about x = 0
    bounds_mm: np.ndarray  # [3, 2]: (min, max) of x, y, z holding the head

    @abstractmethod
    def fractions(self, points: np.ndarray) -> np.ndarray:
        """Tissue fractions ``[T, ...]`` (float32, in [0, 1]) at points ``[..., 3]`` (x, y, z in mm)."""

    def mix(self, points: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``sum_t weights[k, t] f_t(points)`` as float32 ``[K, ...]`` for weights ``[K, T]`` (e.g. the tissue
        signals of a contrast, and ones for the total tissue fraction)."""
        w = np.asarray(weights, dtype=np.float32)
        return np.tensordot(w, self.fractions(points), axes=(1, 0))


class VolumeAnatomy(Anatomy):
    """Fractions stored on a regular grid (uint8, 255 = fraction 1) and sampled trilinearly; zero outside."""

    def __init__(self, name: str, volume: np.ndarray, origin_mm: np.ndarray, spacing_mm: float, symmetric_x: bool):
        if volume.shape[0] != len(TISSUE_NAMES) or volume.dtype != np.uint8:
            raise ValueError("volume must be uint8 [T, X, Y, Z]")
        self.name = name
        self.volume = volume
        self.origin_mm = np.asarray(origin_mm, dtype=np.float64)
        self.spacing_mm = float(spacing_mm)
        self.symmetric_x = symmetric_x
        shape = np.array(volume.shape[1:])
        self.bounds_mm = np.stack([self.origin_mm, self.origin_mm + (shape - 1) * self.spacing_mm], axis=1)

    def fractions(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        idx = ((pts - self.origin_mm) / self.spacing_mm).reshape(-1, 3).T
        out = np.empty((self.volume.shape[0], idx.shape[1]), dtype=np.float32)
        for t in range(self.volume.shape[0]):
            ndimage.map_coordinates(self.volume[t], idx, output=out[t], order=1, mode="constant", cval=0.0)
        out *= 1.0 / 255.0
        return out.reshape((self.volume.shape[0],) + pts.shape[:-1])

    def mix(self, points: np.ndarray, weights: np.ndarray) -> np.ndarray:
        # Interpolation is linear: mix the (cropped) volume first, then interpolate K fields instead of T.
        pts = np.asarray(points, dtype=np.float64)
        idx = ((pts - self.origin_mm) / self.spacing_mm).reshape(-1, 3).T
        shape = np.array(self.volume.shape[1:])
        lo = np.clip(np.floor(idx.min(axis=1)).astype(int) - 1, 0, shape - 1)
        hi = np.clip(np.ceil(idx.max(axis=1)).astype(int) + 2, lo + 1, shape)
        crop = self.volume[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        w = np.asarray(weights, dtype=np.float32) * np.float32(1.0 / 255.0)
        fields = np.tensordot(w, crop.astype(np.float32), axes=(1, 0))
        idx -= lo[:, None]
        out = np.empty((w.shape[0], idx.shape[1]), dtype=np.float32)
        for k in range(w.shape[0]):
            ndimage.map_coordinates(fields[k], idx, output=out[k], order=1, mode="constant", cval=0.0)
        return out.reshape((w.shape[0],) + pts.shape[:-1])


def _ramp(d: np.ndarray, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Fraction of the shell ``a <= d < b`` with 1 mm linear edges."""
    return np.clip(d - a + 0.5, 0.0, 1.0) - np.clip(d - b + 0.5, 0.0, 1.0)


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return a
    pad = [(0, (-s) % k) for s in a.shape]
    a = np.pad(a, pad, mode="edge")
    x, y, z = (s // k for s in a.shape)
    return a.reshape(x, k, y, k, z, k).mean(axis=(1, 3, 5))


def _load_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GM, WM probability maps and brain mask (1 mm, float32) and the affine, read from the nilearn wheel."""
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    gm = np.asarray(gm_img.get_fdata(dtype=np.float32))
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32))
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32))
    return gm, wm, mask, np.asarray(gm_img.affine)


@functools.lru_cache(maxsize=2)
def mni_anatomy(resolution_mm: int = 2) -> VolumeAnatomy:
    """The MNI ICBM152 2009 head as a :class:`VolumeAnatomy` on a ``resolution_mm`` (1 or 2) grid (cached)."""
    if resolution_mm not in (1, 2):
        raise ValueError("resolution_mm must be 1 or 2")
    gm, wm, mask, affine = _load_templates()
    if not np.allclose(np.abs(np.diag(affine)[:3]), 1.0) or np.any(np.diag(affine)[:3] < 0):
        raise RuntimeError("unexpected MNI template affine; nilearn changed its templates")
    origin = affine[:3, 3].astype(np.float64)
    # crop to the brain's bounding box (the shells are added around it below)
    keep = np.nonzero((mask >= 0.5) | (gm + wm > 0.05))
    lo = np.array([a.min() for a in keep])
    hi = np.array([a.max() + 1 for a in keep])
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    gm, wm, mask = (np.clip(a[box], 0.0, 1.0) for a in (gm, wm, mask))
    origin = origin + lo
    k = resolution_mm
    gm, wm, mask = (_block_mean(a, k).astype(np.float32) for a in (gm, wm, mask))
    origin = origin + (k - 1) / 2.0
    pad = int(np.ceil(24 / k))  # room for the 17-22 mm of extra-cranial shells
    gm, wm, mask = (np.pad(a, pad) for a in (gm, wm, mask))
    origin = origin - pad * k

    brain = mask >= 0.5
    del mask
    s = gm + wm
    over = s > 1.0
    gm = np.where(over, gm / np.maximum(s, 1e-6), gm)
    wm = np.where(over, wm / np.maximum(s, 1e-6), wm)
    s = gm + wm
    d = ndimage.distance_transform_edt(~brain, sampling=k).astype(np.float32)  # mm outside the brain

    center = np.asarray(ndimage.center_of_mass(brain), dtype=np.float64)  # voxel index of the brain centroid
    rx, ry, rz = np.ogrid[: gm.shape[0], : gm.shape[1], : gm.shape[2]]
    rx, ry, rz = ((r - c).astype(np.float32) for r, c in zip((rx, ry, rz), center))
    lateral = np.abs(rx) / np.maximum(np.sqrt(rx * rx + ry * ry + rz * rz), 1e-6)  # 1 at the temples, 0 front/back/top
    muscle_end = 11.0 + 6.0 * lateral ** 2
    del lateral
    free = np.where(brain, np.float32(0.0), 1.0 - s)  # room left outside the brain mask
    volume = np.zeros((len(TISSUE_NAMES),) + gm.shape, dtype=np.uint8)  # lesion: none in the template

    def put(name: str, field: np.ndarray) -> None:
        volume[TISSUE_INDEX[name]] = np.round(np.clip(field, 0.0, 1.0) * 255.0)

    put("gm", gm)
    put("wm", wm)
    put("csf", np.where(brain, 1.0 - s, free * _ramp(d, 0.0, 3.0)))
    put("bone", free * _ramp(d, 3.0, 9.0))
    put("muscle", free * _ramp(d, 9.0, muscle_end))
    put("fat", free * _ramp(d, muscle_end, muscle_end + 5.0))
    return VolumeAnatomy(f"mni152_2009_{k}mm", volume, origin, float(k), symmetric_x=True)
