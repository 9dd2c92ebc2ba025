"""Per-VOLUME validation metrics from per-slice outputs, correct under DDP (no Lightning).

:class:`VolumeCollector` stores the slices of each volume (``fname``) as they arrive; when a volume is complete
(its expected slice count reached) it is stacked ``[S, h, w]`` and scored with the fastMRI metrics of
``evaluation.metrics`` (NMSE and PSNR over the volume, SSIM averaged over slices, data range = target volume max),
then its arrays are dropped, so memory holds about one volume. :func:`gather_volume_metrics` joins the per-rank
lists with ``all_gather_object`` and de-duplicates by volume; every rank then averages the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def volume_metrics(target: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """fastMRI NMSE / PSNR / SSIM of one volume ``[S, h, w]`` (REFERENCE section 4)."""
    from mrlearn.evaluation import metrics

    target = np.asarray(target, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    return {"nmse": float(metrics.nmse(target, pred)), "psnr": float(metrics.psnr(target, pred)),
            "ssim": float(metrics.ssim(target, pred))}


class VolumeCollector:
    """Collect ``(fname, slice) -> (pred, target)`` and score each volume once complete."""

    def __init__(self, expected: dict[str, int] | None = None):
        self.expected = dict(expected or {})
        self._slices: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self.results: dict[str, dict[str, float]] = {}

    def add(self, fname: str, slice_index: int, pred: np.ndarray, target: np.ndarray) -> None:
        vol = self._slices.setdefault(fname, {})
        vol[int(slice_index)] = (np.asarray(pred, dtype=np.float32), np.asarray(target, dtype=np.float32))
        if fname in self.expected and len(vol) >= self.expected[fname]:
            self._finish(fname)

    def _finish(self, fname: str) -> None:
        vol = self._slices.pop(fname)
        order = sorted(vol)
        pred = np.stack([vol[s][0] for s in order])
        target = np.stack([vol[s][1] for s in order])
        self.results[fname] = volume_metrics(target, pred)

    def finish(self) -> dict[str, dict[str, float]]:
        """Score the volumes still open (e.g. partial ones under ``limit_val_batches``) and return all results."""
        for fname in list(self._slices):
            self._finish(fname)
        return self.results


def gather_volume_metrics(results: dict[str, dict[str, float]], extra: Any = None) -> tuple[dict[str, dict[str, float]], list[Any]]:
    """All ranks' per-volume results (sorted by volume) and the list of every rank's ``extra``."""
    parts = [(results, extra)]
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, (results, extra))
    merged: dict[str, dict[str, float]] = {}
    for res, _ in parts:
        merged.update(res)
    return dict(sorted(merged.items())), [e for _, e in parts]


def summarise_volumes(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean and standard deviation over volumes of each metric (``nmse``, ``nmse_std``, ...)."""
    out: dict[str, float] = {}
    if not results:
        return out
    for key in next(iter(results.values())):
        values = np.array([r[key] for r in results.values()], dtype=np.float64)
        out[key] = float(values.mean())
        out[f"{key}_std"] = float(values.std())
    return out
