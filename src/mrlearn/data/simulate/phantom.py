"""A procedural head phantom: nested and embedded ellipsoids with tissue labels (no nilearn, no files).

Same frame and interface as the MNI head (:class:`mrlearn.data.simulate.anatomy.Anatomy`): x left-to-right,
y posterior-to-anterior, z inferior-to-superior, in mm, head centred at the origin (about 160 x 200 x 180 mm).
From outside in: subcutaneous fat, muscle, skull bone, extra-axial CSF, grey matter, white matter, with deep grey
nuclei, two lateral ventricles (CSF) and a few cortical grey-matter islands. Mirror-symmetric about x = 0.
Ellipsoids are painted in order (later ones replace earlier ones) with 1 mm linear edges, so the fractions
carry partial volume. Evaluation is analytic and fast: it is meant for unit tests of everything else.
"""

from __future__ import annotations

import functools

import numpy as np

from mrlearn.data.simulate.anatomy import Anatomy
from mrlearn.data.simulate.tissue import TISSUE_INDEX, TISSUE_NAMES

# (tissue, centre (x, y, z) mm, semi-axes (a, b, c) mm), painted in order.
_ELLIPSOIDS: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("fat", (0, 0, 0), (80, 100, 90)),
    ("muscle", (0, 0, 0), (75, 95, 85)),
    ("bone", (0, 0, 0), (72, 92, 82)),
    ("csf", (0, 0, 2), (66, 86, 75)),
    ("gm", (0, 0, 2), (63, 83, 72)),
    ("wm", (0, 0, 4), (50, 68, 56)),
    ("gm", (-22, 8, 0), (9, 14, 10)),
    ("gm", (22, 8, 0), (9, 14, 10)),
    ("csf", (-9, 4, 10), (5, 24, 12)),
    ("csf", (9, 4, 10), (5, 24, 12)),
    ("gm", (-35, -30, 30), (6, 8, 6)),
    ("gm", (35, -30, 30), (6, 8, 6)),
    ("csf", (0, 0, 45), (2, 60, 25)),  # interhemispheric fissure
)
_EDGE_MM = 1.0


class PhantomAnatomy(Anatomy):
    """The procedural ellipsoid head; ``fractions(points)`` evaluates it analytically."""

    name = "phantom"
    symmetric_x = True
    bounds_mm = np.array([[-82.0, 82.0], [-102.0, 102.0], [-92.0, 92.0]])

    def fractions(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float32)
        out = np.zeros((len(TISSUE_NAMES),) + pts.shape[:-1], dtype=np.float32)
        for tissue, centre, axes in _ELLIPSOIDS:
            rel = (pts - np.asarray(centre, dtype=np.float32)) / np.asarray(axes, dtype=np.float32)
            r = np.sqrt((rel * rel).sum(axis=-1))
            alpha = np.clip(0.5 - (r - 1.0) * (min(axes) / _EDGE_MM), 0.0, 1.0)
            out *= 1.0 - alpha
            out[TISSUE_INDEX[tissue]] += alpha
        return out


@functools.lru_cache(maxsize=1)
def phantom_anatomy() -> PhantomAnatomy:
    """The procedural phantom (stateless; one shared instance)."""
    return PhantomAnatomy()
