"""Score predicted segmentations of submission files against the labels of their target files (``mrlearn evaluate``).

A pair is scored when the target file stores ``segmentation`` (uint8 ``[S, h, w]``, names in its
``segmentation_labels`` attr) and the prediction file stores ``segmentation`` beside ``reconstruction`` (as
``mrlearn reconstruct --checkpoint`` of a joint model writes it). Crops as for the images
(:mod:`mrlearn.evaluation.evaluate`): the target labels cropped to ``(w, w)`` when taller than wide (``square``), the
prediction centre-cropped to the target's size. Metrics (:mod:`mrlearn.evaluation.segmentation`): per class, Dice
over the volume and HD95 of the in-plane surface distances pooled over the volume's slices, in mm.

Pixel spacing, the convention: ``(dy, dx) = (reconSpace fieldOfView_mm x / matrixSize x, y / y)`` of the target
file's ``ismrmrd_header`` (ISMRMRD x is the readout axis, the rows ``h`` of the image; y the phase encoding, the
columns ``w``); cropping keeps it. Without a header (or a field of view) the distances are in pixels, and the row
says ``"spacing_mm": null`` and ``"hd95_unit": "pixel"``.

Classes: ``0 .. K - 1`` with ``K`` one more than the largest label named in the target's ``segmentation_labels`` or
found in either map. Summaries: per class, the mean Dice over the volumes where it is defined, the mean and the
median of the finite HD95 values and the number of volumes where HD95 is infinite (class in one map only); ``dice``
is the mean of the per-class Dice means over the foreground classes (label >= 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mrlearn.evaluation.segmentation import mean_foreground, volume_scores


def pixel_spacing_mm(path: Any) -> tuple[float, float] | None:
    """``(dy, dx)`` in mm of a fastMRI file's target grid from its ISMRMRD header (module docstring), or None."""
    from mrlearn.data.fastmri import open_volume, parse_ismrmrd_header

    with open_volume(path) as f:
        if "ismrmrd_header" not in f:
            return None
        header = parse_ismrmrd_header(f["ismrmrd_header"][()], path)
    fov, size = header.get("recon_fov_mm"), header.get("recon_size")
    if not fov or not size or min(size[:2]) <= 0 or min(fov[:2]) <= 0:
        return None
    return (float(fov[0]) / size[0], float(fov[1]) / size[1])


def _pred_labels(path: Any) -> np.ndarray | None:
    from mrlearn.data.fastmri import open_volume
    from mrlearn.data.segmentation import SEGMENTATION_KEY, stored_to_uint8
    from mrlearn.errors import input_error

    with open_volume(path) as f:
        if SEGMENTATION_KEY not in f:
            return None
        data = f[SEGMENTATION_KEY]
        if data.ndim != 3 or np.dtype(data.dtype).kind not in "biu":
            raise input_error(path, f"'{SEGMENTATION_KEY}' is {data.dtype} {tuple(data.shape)}, expected uint8 labels "
                              "[slices, h, w]", "store one label map per slice")
        return stored_to_uint8(path, data[()])


def score_pairs(pairs: Iterable[Any], square: bool = True) -> list[dict[str, Any]]:
    """Rows ``{"volume", "acquisition", "classes", "names", "spacing_mm", "hd95_unit", "dice", "hd95"}`` for the
    pairs (``evaluate.VolumePair`` with file paths) whose target and prediction both carry labels."""
    from mrlearn.data.fastmri import read_segmentation, read_segmentation_labels
    from mrlearn.evaluation.evaluate import match_prediction, square_target

    rows = []
    for pair in pairs:
        target = read_segmentation(pair.target)
        pred = _pred_labels(pair.pred) if target is not None else None
        if target is None or pred is None:
            continue
        names = read_segmentation_labels(pair.target)
        if square:
            target = square_target(target)
        pred = match_prediction(target, pred, str(pair.pred))
        k = int(max([*names, int(target.max()), int(pred.max())])) + 1
        spacing = pixel_spacing_mm(pair.target)
        scores = volume_scores(pred, target.astype(np.int64), k, spacing)
        rows.append({"volume": str(pair.volume), "acquisition": str(pair.acquisition), "classes": k,
                     "names": [names.get(c, str(c)) for c in range(k)],
                     "spacing_mm": list(spacing) if spacing else None, "hd95_unit": "mm" if spacing else "pixel",
                     **scores})
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-class summaries over volumes and the mean foreground Dice (module docstring)."""
    k = max((r["classes"] for r in rows), default=0)
    names = next((r["names"] for r in rows if r["classes"] == k), [str(c) for c in range(k)])
    classes = []
    for c in range(k):
        dice = np.array([r["dice"][c] for r in rows if c < r["classes"]], dtype=np.float64)
        hd = np.array([r["hd95"][c] for r in rows if c < r["classes"]], dtype=np.float64)
        finite = hd[np.isfinite(hd)]
        classes.append({"label": c, "name": names[c],
                        "dice": float(np.mean(dice[np.isfinite(dice)])) if np.isfinite(dice).any() else math.nan,
                        "hd95_mean": float(finite.mean()) if finite.size else math.nan,
                        "hd95_median": float(np.median(finite)) if finite.size else math.nan,
                        "hd95_infinite": int(np.isinf(hd).sum()), "volumes": int(np.isfinite(dice).sum())})
    return {"volumes": len(rows), "dice": mean_foreground([c["dice"] for c in classes]), "classes": classes,
            "hd95_unit": "mm" if all(r["spacing_mm"] for r in rows) else "pixel"}


def format_table(summary: dict[str, Any]) -> str:
    """Per-class lines: label, name, mean Dice, mean / median HD95 (and how many volumes had it infinite)."""
    unit = summary["hd95_unit"]
    head = f"{'label':>5}  {'class':<12}  {'Dice':>6}  {'HD95 mean (' + unit + ')':>17}  {'median':>7}  {'inf':>3}"
    lines = [f"segmentation ({summary['volumes']} volumes), mean foreground Dice {summary['dice']:.4f}", head]
    for c in summary["classes"]:
        lines.append(f"{c['label']:>5}  {c['name'][:12]:<12}  {c['dice']:>6.4f}  {c['hd95_mean']:>17.3f}  "
                     f"{c['hd95_median']:>7.3f}  {c['hd95_infinite']:>3}")
    return "\n".join(lines)
