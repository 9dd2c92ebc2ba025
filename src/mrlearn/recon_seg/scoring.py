"""Validation Dice of a joint method, accumulated per volume over batches (no Lightning).

:class:`DiceCollector` adds, per volume (file name), the per-class counts ``(|A ∩ B|, |A|, |B|)`` of
:func:`mrlearn.evaluation.segmentation.dice_counts` for the predicted and reference labels of every slice that has
labels (ignore index -1 elsewhere), then :meth:`DiceCollector.summary` gives the Dice per class and volume, the
per-class means over volumes (NaN-free: classes absent from a volume in both maps are left out) and ``dice``, the
mean of those over the foreground classes (label >= 1). Several processes: :meth:`gather` merges the counts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from mrlearn.evaluation.segmentation import dice_counts, dice_from_counts, mean_foreground


class DiceCollector:
    """Per-volume Dice counts (module docstring)."""

    def __init__(self, num_classes: int, ignore_index: int = -1):
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.counts: dict[str, np.ndarray] = {}  # fname -> int64 [3, K]

    def add(self, fname: str, pred: np.ndarray, target: np.ndarray) -> None:
        """One slice's predicted and reference labels ``[h, w]``; a slice without labels (all -1) adds nothing."""
        if not np.any(np.asarray(target) != self.ignore_index):
            return
        row = np.stack(dice_counts(pred, target, self.num_classes, self.ignore_index))
        self.counts[fname] = self.counts.get(fname, 0) + row

    def add_batch(self, fnames: list[str], pred: torch.Tensor, target: torch.Tensor | None) -> None:
        """A batch's labels ``[B, h, w]`` (``target`` ``[B, 1, h, w]`` or ``[B, h, w]``, None: nothing to add)."""
        if target is None:
            return
        target = target.reshape(pred.shape)
        for i, fname in enumerate(fnames):
            self.add(fname, pred[i].cpu().numpy(), target[i].cpu().numpy())

    def gather(self) -> None:
        """Merge the counts of all processes (DDP); a no-op in one process."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return
        parts: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, self.counts)
        merged: dict[str, np.ndarray] = {}
        for part in parts:
            for fname, row in (part or {}).items():
                merged[fname] = merged.get(fname, 0) + row
        self.counts = merged

    def summary(self) -> dict[str, Any]:
        """``{"dice": mean foreground Dice, "per_class": [K] means over volumes, "volumes": {fname: [K]}}``."""
        volumes = {f: dice_from_counts(*row) for f, row in sorted(self.counts.items())}
        if not volumes:
            return {"dice": math.nan, "per_class": [math.nan] * self.num_classes, "volumes": {}}
        table = np.stack(list(volumes.values()))
        with np.errstate(invalid="ignore"):
            per_class = [float(np.nanmean(col)) if np.isfinite(col).any() else math.nan for col in table.T]
        return {"dice": mean_foreground(per_class), "per_class": per_class,
                "volumes": {f: [float(v) for v in d] for f, d in volumes.items()}}
