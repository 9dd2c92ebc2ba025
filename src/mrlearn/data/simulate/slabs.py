"""Where the slabs come from: orientations, train/val/test zones along the slab axis, and sampling grids.

Orientations (image rows, image columns, slab normal; MNI frame x left-to-right, y posterior-to-anterior,
z inferior-to-superior; radiological display, the subject's right on the image's left):

* ``axial``: rows anterior -> posterior, columns right -> left, slab along z.
* ``coronal``: rows superior -> inferior, columns right -> left, slab along y.
* ``sagittal``: rows superior -> inferior, columns anterior -> posterior, slab along x.

A random in-plane rotation by a multiple of 90 degrees and a random flip are applied per volume, plus a
translation of up to +-4 mm.

Disjoint splits: per orientation, the range of slab-axis positions where the brain cross-section is at least
30 % of its largest is cut into five equal zones assigned (train, val, train, test, train) -- (train, test, train,
val, train) for coronal -- and every slab lies inside one zone of its split. Zones of different splits are kept
one slice spacing apart, so no slice position is shared and neighbouring slices of different splits are at least
one spacing apart. For a mirror-symmetric anatomy (the symmetric MNI template, the phantom), sagittal slabs use
x >= 0 only, so no split holds the mirror image of another split's slice. Slices of different orientations do
intersect (as in one subject scanned in three planes); the split is by position along each slab axis.
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
_ZONES = {
    "axial": ("train", "val", "train", "test", "train"),
    "coronal": ("train", "test", "train", "val", "train"),
    "sagittal": ("train", "val", "train", "test", "train"),
}
MAX_SHIFT_MM = 4.0


@dataclass(frozen=True)
class Layout:
    """Head centre (mm) and the usable slab-axis range ``(lo, hi)`` (mm) per orientation."""

    center_mm: tuple[float, float, float]
    ranges: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Slab:
    """One volume's geometry: orientation, split, slice positions along the normal (mm), rotation, flip, shift."""

    orientation: str
    split: str
    positions_mm: tuple[float, ...]
    rot90: int
    flip: bool
    shift_mm: tuple[float, float]


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
        lo, hi = float(axes[ax][keep[0]]), float(axes[ax][keep[-1]])
        if name == "sagittal" and anatomy.symmetric_x:
            lo = max(lo, 0.0)
        ranges[name] = (lo, hi)
    return Layout(center, ranges)


def slice_spacing(layout: Layout, slices: int, pixel_mm: float) -> float:
    """The in-plane pixel size, shrunk where needed so a slab of ``slices`` fits in every zone with its guard."""
    shortest = min(hi - lo for lo, hi in layout.ranges.values())
    return float(min(pixel_mm, shortest / (len(_ZONES["axial"]) * slices)))


def split_zones(layout: Layout, orientation: str, split: str, spacing: float) -> list[tuple[float, float]]:
    """The ``(lo, hi)`` intervals (mm) of the slab axis where ``split``'s slices may lie."""
    lo, hi = layout.ranges[orientation]
    pattern = _ZONES[orientation]
    edges = np.linspace(lo, hi, len(pattern) + 1)
    out = []
    for k, name in enumerate(pattern):
        if name == split:
            a = edges[k] + (spacing / 2 if k > 0 else 0.0)
            b = edges[k + 1] - (spacing / 2 if k < len(pattern) - 1 else 0.0)
            out.append((float(a), float(b)))
    return out


def sample_slab(layout: Layout, orientation: str, split: str, slices: int, spacing: float, rng: np.random.Generator) -> Slab:
    """Draw a slab of ``split`` in a random zone of that split, with random rotation/flip/shift."""
    zones = split_zones(layout, orientation, split, spacing)
    a, b = zones[int(rng.integers(len(zones)))]
    extent = (slices - 1) * spacing
    if b - a < extent - 1e-6:
        raise input_error("simulate option 'slices'", f"{slices} slices do not fit in a {split} zone of {b - a:.0f} mm",
                          "use fewer slices per volume")
    start = float(rng.uniform(a, max(a, b - extent)))
    positions = tuple(round(start + i * spacing, 4) for i in range(slices))
    rot = int(rng.integers(4))
    flip = bool(rng.random() < 0.5)
    shift = tuple(float(v) for v in rng.uniform(-MAX_SHIFT_MM, MAX_SHIFT_MM, 2))
    return Slab(orientation, split, positions, rot, flip, shift)


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
