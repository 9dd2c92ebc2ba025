"""Sampling patterns of undersampled Cartesian k-space: find them in the data and describe them.

A real undersampled acquisition stores zeros where nothing was sampled, so the pattern is where the data are
non-zero in any coil. Patterns are boolean: ``[W]`` (1-D, whole columns of the phase-encoding axis W),
``[H, W]`` (2-D, one pattern for every slice) or ``[S, H, W]`` (2-D, one per slice). k-space axes follow
docs/architecture.md: ``[S, C, H, W]`` with H the readout and W the phase encoding; the k-space centre is at
index ``(H // 2, W // 2)``.
"""

from __future__ import annotations

import numpy as np

#: Patterns sampling less than this fraction of k-space are refused (nothing sensible can be reconstructed).
MIN_SAMPLED_FRACTION = 0.02


def sampled_points(kspace_schw: np.ndarray) -> np.ndarray:
    """Boolean ``[S, H, W]``: True where any coil holds a non-zero sample."""
    k = np.asarray(kspace_schw)
    return np.any(k != 0, axis=1)


def simplify_pattern(points: np.ndarray) -> np.ndarray:
    """The most compact exact form of a sampling pattern ``[S, H, W]``.

    ``[W]`` when every slice samples whole columns and all slices agree; ``[H, W]`` when all slices agree;
    otherwise ``[S, H, W]`` unchanged.
    """
    p = np.asarray(points, dtype=bool)
    same = bool((p == p[:1]).all())
    if same:
        first = p[0]
        cols = first.any(axis=0)
        if bool((first == cols[None, :]).all()):
            return cols
        return first
    return p


def sampled_fraction(pattern: np.ndarray) -> float:
    """Fraction of k-space positions sampled (a 1-D pattern samples whole columns)."""
    return float(np.asarray(pattern, dtype=bool).mean())


def centre_run(line: np.ndarray) -> int:
    """Length of the run of True entries through the centre index ``n // 2`` (0 when the centre is False)."""
    line = np.asarray(line, dtype=bool)
    c = line.shape[0] // 2
    if not line[c]:
        return 0
    false_left = np.flatnonzero(~line[:c])
    false_right = np.flatnonzero(~line[c + 1:])
    left = c - (false_left[-1] + 1 if false_left.size else 0)
    right = false_right[0] if false_right.size else line.shape[0] - c - 1
    return int(left + right + 1)


def calibration_box(pattern2d: np.ndarray) -> tuple[int, int]:
    """``(rows, cols)`` of the largest fully sampled box around the k-space centre of a 2-D pattern ``[H, W]``.

    Bands of rows are grown around row ``H // 2`` (one row above, then one below, alternately, while the band stays
    sampled at the centre column); for each band the box width is the run of columns through ``W // 2`` sampled in
    every row of the band. The box of largest area wins (ties: the first, i.e. the shorter band). ``(0, 0)`` when
    the centre is not sampled.
    """
    p = np.asarray(pattern2d, dtype=bool)
    h, w = p.shape
    ch = h // 2
    if not p[ch, w // 2]:
        return (0, 0)
    top, bottom = ch, ch
    band = p[ch].copy()
    best = (1, centre_run(band))
    grow_up = True
    while True:
        candidates = ([top - 1] if top > 0 else []) + ([bottom + 1] if bottom < h - 1 else [])
        if not grow_up:
            candidates.reverse()
        row = next((r for r in candidates if p[r, w // 2]), None)
        if row is None:
            break
        band &= p[row]
        top, bottom = min(top, row), max(bottom, row)
        grow_up = not grow_up
        box = (bottom - top + 1, centre_run(band))
        if box[0] * box[1] > best[0] * best[1]:
            best = box
    return best


def describe_pattern(pattern: np.ndarray) -> dict[str, float | int | list[int]]:
    """fastMRI attrs of a pattern: ``acceleration`` (positions / sampled positions) and ``num_low_frequency``
    (fully sampled centre columns: the centre run of a 1-D pattern, the width of :func:`calibration_box` of a
    2-D one, the smallest over slices for ``[S, H, W]``); 2-D patterns also give ``calibration_box`` ``[rows, cols]``."""
    p = np.asarray(pattern, dtype=bool)
    frac = sampled_fraction(p)
    acc = float(1.0 / frac) if frac > 0 else float("inf")
    if p.ndim == 1:
        return {"acceleration": acc, "num_low_frequency": centre_run(p)}
    boxes = [calibration_box(s) for s in (p[None] if p.ndim == 2 else p)]
    box = min(boxes, key=lambda b: b[0] * b[1])
    return {"acceleration": acc, "num_low_frequency": int(box[1]), "calibration_box": [int(box[0]), int(box[1])]}
