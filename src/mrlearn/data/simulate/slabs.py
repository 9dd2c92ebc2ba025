"""Where the slabs come from: orientations, the usable range along the slab axis, and sampling grids.

Orientations (image rows, image columns, slab normal; MNI frame x left-to-right, y posterior-to-anterior,
z inferior-to-superior; radiological display, the subject's right on the image's left):

* ``axial``: rows anterior -> posterior, columns right -> left, slab along z.
* ``coronal``: rows superior -> inferior, columns right -> left, slab along y.
* ``sagittal``: rows superior -> inferior, columns anterior -> posterior, slab along x.

Each subject has one slab of consecutive slices at a uniform random position inside the range of slab-axis
positions where the template's brain cross-section is at least 30 % of its largest. Splits are by subject
(:mod:`build`), so slabs need no zones: every subject is its own head (pose, size and shape differ, see
:mod:`subject`). ``rot90`` / ``flip`` / ``shift_mm`` remain for callers that want in-plane variants of a slab.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrlearn.data.simulate.anatomy import Anatomy
from mrlearn.data.simulate.tissue import TISSUE_INDEX
from mrlearn.errors import input_error

ORIENTATIONS: tuple[str, ...] = ("axial", "coronal", "sagittal")
_BASIS = {  # (row direction, column direction, slab normal) as (x, y, z) unit vectors
    "axial": ((0.0, -1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "coronal": ((0.0, 0.0, -1.0), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, 0.0, -1.0), (0.0, -1.0, 0.0), (1.0, 0.0, 0.0)),
}
_NORMAL_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


@dataclass(frozen=True)
class Layout:
    """Head centre (mm) and the usable slab-axis range ``(lo, hi)`` (mm) per orientation."""

    center_mm: tuple[float, float, float]
    ranges: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Slab:
    """One volume's geometry: orientation, slice positions along the normal (mm), in-plane rotation by
    ``rot90`` quarter turns, column flip, in-plane shift (mm)."""

    orientation: str
    positions_mm: tuple[float, ...]
    rot90: int = 0
    flip: bool = False
    shift_mm: tuple[float, float] = (0.0, 0.0)


def anatomy_layout(anatomy: Anatomy, step_mm: float = 4.0) -> Layout:
    """Measure the head centre and brain extent on a coarse grid of the anatomy's bounding box."""
    axes = [np.arange(lo, hi + 1e-9, step_mm) for lo, hi in anatomy.bounds_mm]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    f = anatomy.fractions(pts)
    head = f.sum(axis=0) > 0.5
    brain = f[TISSUE_INDEX["gm"]] + f[TISSUE_INDEX["wm"]]
    center = tuple(float(pts[..., i][head].mean()) for i in range(3))
    ranges = {}
    for name, ax in _NORMAL_AXIS.items():
        profile = brain.sum(axis=tuple(i for i in range(3) if i != ax))
        keep = np.nonzero(profile >= 0.3 * profile.max())[0]
        ranges[name] = (float(axes[ax][keep[0]]), float(axes[ax][keep[-1]]))
    return Layout(center, ranges)


def slice_spacing(layout: Layout, slices: int, pixel_mm: float) -> float:
    """The in-plane pixel size, shrunk where needed so a slab of ``slices`` fits in every orientation's range."""
    shortest = min(hi - lo for lo, hi in layout.ranges.values())
    return float(min(pixel_mm, shortest / max(slices, 1)))


def sample_slab(layout: Layout, orientation: str, slices: int, spacing: float, rng: np.random.Generator) -> Slab:
    """A slab of ``slices`` consecutive slices at a uniform random position inside the orientation's range."""
    a, b = layout.ranges[orientation]
    extent = (slices - 1) * spacing
    if b - a < extent - 1e-6:
        raise input_error("simulate option 'slices'", f"{slices} slices do not fit in the {b - a:.0f} mm of brain",
                          "use fewer slices per subject")
    start = float(rng.uniform(a, max(a, b - extent)))
    return Slab(orientation, tuple(round(start + i * spacing, 4) for i in range(slices)))


def slab_points(layout: Layout, slab: Slab, shape: tuple[int, int], pixel_mm: float) -> np.ndarray:
    """Sampling points ``[S, H, W, 3]`` (mm): pixel ``(i, j)`` at ``(i - H // 2, j - W // 2) * pixel_mm`` in-plane."""
    row, col, normal = (np.asarray(v) for v in _BASIS[slab.orientation])
    for _ in range(slab.rot90):
        row, col = col, -row
    if slab.flip:
        col = -col
    h, w = shape
    u = (np.arange(h) - h // 2) * pixel_mm + slab.shift_mm[0]
    v = (np.arange(w) - w // 2) * pixel_mm + slab.shift_mm[1]
    center = np.asarray(layout.center_mm, dtype=np.float64)
    center = center - normal * center[_NORMAL_AXIS[slab.orientation]]  # in-plane centre, normal coordinate 0
    s = np.asarray(slab.positions_mm, dtype=np.float64)
    pts = (center + s[:, None, None, None] * normal
           + u[None, :, None, None] * row + v[None, None, :, None] * col)
    return np.broadcast_to(pts, (len(s), h, w, 3)).astype(np.float32)
