"""Test scores of one ``recon_seg`` study run: fastMRI image metrics and Dice, per volume and per slice (no Lightning).

:func:`score_split` runs a reconstruction callable and a segmentation callable over a loader (they may come from
different checkpoints: each task is scored with the weights selected on its own validation metric) and returns a
:class:`~mrlearn.study.results.RunOutcome` with group ``all``:

* image metrics (when a reconstruction is given): ``psnr``, ``ssim``, ``nmse`` per volume, fastMRI conventions
  (:class:`mrlearn.evaluation.scoring.VolumeCollector`), averaged over volumes; per slice with the volume's peak;
* ``dice``: per volume, the Dice of each class from the counts of the whole volume, then the mean over the
  foreground classes present in the volume (either map); the group value is the mean over volumes.
  ``dice_<class name>`` is each class's mean over the volumes where it is present;
* per slice ``dice``: the same mean over the foreground classes present in that slice (either map; NaN when none,
  and such slices are left out of the cells); a class in one map only counts 0;
* examples: the middle slice of the first ``examples`` volume(s): ``target``, ``input`` (zero-filled),
  ``output`` (the reconstruction, when given), ``labels`` (reference) and ``seg`` (predicted), ``maxval``.

Labels are int ``[B, h, w]``; pixels labelled -1 (no label) are ignored.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch

from mrlearn.evaluation.scoring import VolumeCollector, mean_metrics
from mrlearn.evaluation.segmentation import dice_counts, dice_from_counts, mean_foreground
from mrlearn.study.results import RunOutcome

Images = Callable[[Any], torch.Tensor]


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()


def score_split(batches: Iterable[Any], segment: Images, num_classes: int, reconstruct: Images | None = None,
                class_names: dict[int, str] | None = None, examples: int = 1, group: str = "all") -> RunOutcome:
    """Score every labelled slice of ``batches`` (module docstring). ``segment(batch) -> labels [B, h, w]``,
    ``reconstruct(batch) -> image [B, h, w]`` in data units (None: no image metrics)."""
    images = VolumeCollector(slice_rows=True, group=group) if reconstruct is not None else None
    counts: dict[str, np.ndarray] = {}  # fname -> [3, K]
    slice_dice: dict[tuple[str, int], float] = {}
    shown: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    with torch.no_grad():
        for batch in batches:
            labels = batch.get("segmentation")
            if labels is None:
                continue
            pred = segment(batch)
            image = reconstruct(batch) if reconstruct is not None else None
            if images is not None:
                images.add_batch(batch, image)
            truth = labels.reshape(pred.shape)
            for i, (fname, sl) in enumerate(zip(batch["fname"], batch["slice"])):
                t, p = _np(truth[i]), _np(pred[i])
                if not np.any(t != -1):
                    continue
                row = np.stack(dice_counts(p, t, num_classes))
                counts[fname] = counts.get(fname, 0) + row
                slice_dice[(str(fname), int(sl))] = mean_foreground(dice_from_counts(*row))
                if fname in shown or len(shown) < examples:
                    shown.setdefault(fname, {})[int(sl)] = {
                        "target": _np(batch["target"][i, 0]), "labels": t.astype(np.float32),
                        "seg": p.astype(np.float32), **({"output": _np(image[i])} if image is not None else {}),
                        **({"input": _np(batch["zero_filled"][i, 0])} if batch.get("zero_filled") is not None else {})}
    if not counts:
        return RunOutcome(groups={})
    per_volume = {f: dice_from_counts(*row) for f, row in sorted(counts.items())}
    metrics: dict[str, float] = {}
    if images is not None:
        metrics.update(mean_metrics(images.finish().values()))
    metrics["dice"] = float(np.nanmean([mean_foreground(d) for d in per_volume.values()]))
    table = np.stack(list(per_volume.values()))
    for k in range(1, num_classes):
        col = table[:, k]
        if np.isfinite(col).any():
            metrics[f"dice_{(class_names or {}).get(k, k)}"] = float(np.nanmean(col))
    metrics["dice_volumes"] = len(per_volume)
    rows = {(r["fname"], r["slice"]): r for r in (images.slices if images is not None else [])}
    slices = []
    for (fname, sl), d in sorted(slice_dice.items()):
        row = rows.get((fname, sl), {"group": group, "fname": fname, "slice": sl})
        slices.append({**row, "dice": d})
    return RunOutcome(groups={group: metrics}, slices=slices, examples=_examples(shown, group))


def _examples(shown: dict[str, dict[int, dict[str, np.ndarray]]], group: str) -> dict[str, dict[str, np.ndarray]]:
    """The middle slice of the first example volume, with its volume's maximum (``maxval``, the data range)."""
    if not shown:
        return {}
    fname = next(iter(shown))
    vol = shown[fname]
    order = sorted(vol)
    chosen = dict(vol[order[len(order) // 2]])
    chosen["maxval"] = np.float64(max(float(v["target"].max()) for v in vol.values()))
    return {group: chosen}
