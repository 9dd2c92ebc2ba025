"""Segmentation metrics: per-class Dice and the 95th-percentile Hausdorff distance (numpy/scipy; no Lightning).

Conventions (the definitions of medpy's ``dc`` / ``hd95``):

* labels are integer class maps of equal shape; ``ignore_index`` (default -1) marks pixels that are not scored;
* Dice of class ``k``: ``2 |A ∩ B| / (|A| + |B|)`` with ``A`` the predicted and ``B`` the reference pixels of the
  class. Empty rule: both empty -> NaN (the class is absent: nothing to score, left out of means); exactly one
  empty -> 0;
* surface of a binary mask: its pixels that a binary erosion with the connectivity-1 structuring element (the
  4-neighbourhood in 2-D, 6 in 3-D) removes, the image border counting as background (``mask XOR erode(mask)``);
* directed surface distances ``d(A -> B)``: for every surface pixel of ``A``, the Euclidean distance in mm (the
  pixel ``spacing`` per axis) to the nearest surface pixel of ``B`` (exact, ``scipy.ndimage.distance_transform_edt``);
* HD95: the 95th percentile (numpy's linear interpolation) of the POOLED symmetric distances
  ``d(A -> B) ∪ d(B -> A)``, as medpy's ``hd95``. MONAI's ``compute_hausdorff_distance(percentile=95)`` takes the
  larger of the two directed 95th percentiles instead, which is never smaller; :func:`hd95` gives it with
  ``pooled=False``. Empty rule: both empty -> NaN; exactly one empty -> ``inf`` (no surface to reach; medpy
  raises there, MONAI returns NaN for an empty reference and inf for an empty prediction).

Volumes of 2-D slices (fastMRI files: ``[S, h, w]``, slices possibly far apart) are scored with
:func:`volume_scores`: Dice from the counts of the whole volume (3-D overlap) and HD95 from in-plane (2-D) surface
distances of every slice pooled over the volume; a slice where the class is in one map only contributes ``inf``
distances for its surface pixels (so HD95 becomes ``inf`` once they exceed 5 % of the pooled distances).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure


def dice_counts(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = -1
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class ``(|A ∩ B|, |A|, |B|)``, int64 ``[num_classes]`` each, over the pixels where target != ignore."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    keep = target != ignore_index
    p, t = pred[keep].astype(np.int64).ravel(), target[keep].astype(np.int64).ravel()
    p = np.where((p >= 0) & (p < num_classes), p, num_classes)  # out-of-range predictions: counted for no class
    size_p = np.bincount(p, minlength=num_classes + 1)[:num_classes]
    size_t = np.bincount(t, minlength=num_classes)[:num_classes]
    inter = np.bincount(t[p == t], minlength=num_classes)[:num_classes]
    return inter, size_p, size_t


def dice_from_counts(inter: np.ndarray, size_p: np.ndarray, size_t: np.ndarray) -> np.ndarray:
    """``2 I / (|A| + |B|)`` per class; NaN where both are empty."""
    denom = np.asarray(size_p, dtype=np.float64) + np.asarray(size_t, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * np.asarray(inter, dtype=np.float64) / denom, math.nan)


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """Dice of every class ``0 .. num_classes - 1`` (float64 ``[num_classes]``; NaN where the class is absent in both)."""
    return dice_from_counts(*dice_counts(pred, target, num_classes, ignore_index))


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary mask: ``mask XOR erode(mask)`` (connectivity 1, border = background)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    return mask ^ binary_erosion(mask, structure=generate_binary_structure(mask.ndim, 1), iterations=1)


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    s = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    s = np.repeat(s, ndim) if s.size == 1 else s
    if s.size != ndim or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be {ndim} positive finite numbers, got {spacing!r}")
    return s


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: float | Sequence[float] | None = None) -> np.ndarray:
    """Directed distances ``d(A -> B)`` (float64, one per surface pixel of ``a``; units of ``spacing``, default
    pixels); ``inf`` for each when ``b`` is empty, an empty array when ``a`` is empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks {a.shape} and {b.shape} differ in shape")
    sa = surface(a)
    if not sa.any():
        return np.zeros(0)
    if not b.any():
        return np.full(int(sa.sum()), math.inf)
    dist = distance_transform_edt(~surface(b), sampling=_spacing(spacing, a.ndim))
    return np.asarray(dist[sa], dtype=np.float64)


def percentile(values: np.ndarray, q: float) -> float:
    """numpy's linear-interpolation percentile that also takes ``inf`` (inf once the interpolation touches one);
    NaN for no values."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if v.size == 0:
        return math.nan
    pos = q / 100.0 * (v.size - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    if math.isinf(v[hi]):
        return math.inf
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


def hd95(pred: np.ndarray, target: np.ndarray, spacing: float | Sequence[float] | None = None, q: float = 95.0,
         pooled: bool = True) -> float:
    """Hausdorff distance at percentile ``q`` between two binary masks (module docstring: pooled = medpy,
    ``pooled=False`` = MONAI); NaN when both are empty, inf when exactly one is."""
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if not pred.any() and not target.any():
        return math.nan
    if not pred.any() or not target.any():
        return math.inf
    d_pt, d_tp = surface_distances(pred, target, spacing), surface_distances(target, pred, spacing)
    if pooled:
        return percentile(np.concatenate([d_pt, d_tp]), q)
    return max(percentile(d_pt, q), percentile(d_tp, q))


def slice_pooled_distances(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Symmetric in-plane surface distances of a stack of 2-D binary masks ``[S, h, w]``, pooled over slices."""
    parts = [np.zeros(0)]
    for p, t in zip(np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)):
        if p.any() or t.any():
            parts += [surface_distances(p, t, spacing), surface_distances(t, p, spacing)]
    return np.concatenate(parts)


def volume_scores(pred: np.ndarray, target: np.ndarray, num_classes: int, spacing: Sequence[float] | None = None,
                  ignore_index: int = -1, q: float = 95.0) -> dict[str, list[float]]:
    """Per-class ``{"dice": [K], "hd95": [K]}`` of a label volume ``[S, h, w]`` (module docstring: Dice over the
    volume, HD95 from slice-wise in-plane distances pooled over the volume; ``spacing`` ``(dy, dx)`` in mm).

    Pixels with ``target == ignore_index`` count as background of every class for HD95 and are left out of Dice.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"expected label volumes [S, h, w] of one shape, got {pred.shape} and {target.shape}")
    dice = dice_per_class(pred, target, num_classes, ignore_index)
    out_hd = []
    for k in range(num_classes):
        p, t = pred == k, target == k
        if not p.any() and not t.any():
            out_hd.append(math.nan)
        elif not p.any() or not t.any():
            out_hd.append(math.inf)
        else:
            out_hd.append(percentile(slice_pooled_distances(p, t, spacing), q))
    return {"dice": [float(v) for v in dice], "hd95": out_hd}


def mean_foreground(values: Sequence[float], background: int | None = 0) -> float:
    """Mean over the classes other than ``background`` of the finite values (NaN when none is finite)."""
    v = np.asarray([x for i, x in enumerate(values) if i != background], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan
