"""The one per-volume scorer: fastMRI NMSE / PSNR / SSIM of whole volumes, collected from per-slice outputs.

Every place that scores reconstructions (validation and test in the training engine, the demo, the study
runners, ``mrlearn evaluate``) uses these functions, so their numbers are the same numbers (fastMRI's evaluation code):

- :func:`volume_metrics` ``(target, pred)`` of one volume ``[S, h, w]``: NMSE and PSNR over the volume (peak =
  target volume max), SSIM per slice with the volume max as data range, averaged over slices;
- a second reference: simulated files also store the noiseless image (``target_noiseless``); where every slice of
  a volume has it, the volume is also scored against it (same formulas, peak = noiseless volume max) and the
  results carry ``nmse_noiseless``, ``psnr_noiseless``, ``ssim_noiseless`` beside ``nmse``, ``psnr``, ``ssim``;
- :func:`slice_metrics`: the same per slice, still with the *volume* max as peak and data range;
- :class:`VolumeCollector`: slices ``(fname, slice, pred, target[, input])`` arrive in any order (batches,
  DDP ranks); a volume is stacked in slice order and scored once complete (its expected slice count reached, or
  at :meth:`~VolumeCollector.finish`), then its arrays are dropped, so memory holds about one volume;
- :func:`score_batches`: reconstruct and score a whole loader (the study runners' test split) in one call;
- :func:`gather_volume_metrics` joins per-rank results (``all_gather_object``) so every rank averages the same
  numbers; :func:`summarise_volumes` and :func:`mean_metrics` average over volumes.

Images are real magnitudes in data units, float32 or float64 (computed in float64). No Lightning.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch

from mrlearn.evaluation.spread import sample_std
from mrlearn.evaluation.metrics import nmse, psnr, slice_ssim, ssim

METRIC_NAMES = ("nmse", "psnr", "ssim")
#: suffix of the metrics against the noiseless reference of simulated data
NOISELESS = "_noiseless"
NOISELESS_METRIC_NAMES = tuple(m + NOISELESS for m in METRIC_NAMES)


def volume_metrics(target: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> dict[str, float]:
    """``{"nmse", "psnr", "ssim"}`` of one volume ``[S, h, w]`` (or a slice ``[h, w]``); ``maxval``: target max."""
    target = np.asarray(target, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    return {"nmse": float(nmse(target, pred)), "psnr": float(psnr(target, pred, maxval)),
            "ssim": float(ssim(target, pred, maxval))}


def slice_metrics(target: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> list[dict[str, float]]:
    """Per-slice ``{"nmse", "psnr", "ssim"}`` of a volume ``[S, h, w]`` with the volume's ``maxval`` (default max)."""
    target = np.asarray(target, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    peak = float(target.max()) if maxval is None else float(maxval)
    ssims = slice_ssim(target, pred, peak)
    return [{"nmse": float(nmse(t, p)), "psnr": float(psnr(t, p, peak)), "ssim": float(s)}
            for t, p, s in zip(target, pred, ssims)]


class VolumeCollector:
    """Collect slices per volume and score each volume once complete (see the module docstring).

    ``expected``: ``fname -> slice count`` (volumes not listed are scored at :meth:`finish`).
    ``slice_rows``: also keep per-slice rows ``{"group", "fname", "slice", "nmse", "psnr", "ssim"}`` in
    :attr:`slices`. ``examples``: keep the middle slice (target, input, output) of the first ``examples`` volumes in
    :attr:`examples` (``fname -> {"target", "input", "output", "maxval"}``; ``maxval``: the target volume's maximum,
    the metrics' data range). ``group`` labels the slice rows.
    Results: :attr:`results` ``fname -> {"nmse", "psnr", "ssim"}``, plus ``nmse_noiseless``, ``psnr_noiseless``,
    ``ssim_noiseless`` for volumes whose slices all came with a (finite) noiseless reference; the slice rows
    likewise.
    """

    def __init__(self, expected: dict[str, int] | None = None, slice_rows: bool = False, examples: int = 0,
                 group: str = ""):
        self.expected = dict(expected or {})
        self.slice_rows, self.max_examples, self.group = bool(slice_rows), int(examples), str(group)
        self._slices: dict[str, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]] = {}
        self.results: dict[str, dict[str, float]] = {}
        self.slices: list[dict[str, Any]] = []
        self.examples: dict[str, dict[str, np.ndarray]] = {}

    def add(self, fname: str, slice_index: int, pred: Any, target: Any, image_input: Any = None,
            noiseless: Any = None) -> None:
        """One slice ``[h, w]`` of volume ``fname`` (``image_input``: the network input, kept for examples;
        ``noiseless``: the noiseless reference ``[h, w]`` of simulated data, or None)."""
        fname = str(fname)
        vol = self._slices.setdefault(fname, {})
        keep_input = image_input is not None and len(self.examples) < self.max_examples
        clean = None if noiseless is None else _numpy(noiseless)
        if clean is not None and not np.isfinite(clean).all():  # NaN-filled: this slice's file has none
            clean = None
        vol[int(slice_index)] = (_numpy(pred), _numpy(target), _numpy(image_input) if keep_input else None, clean)
        if fname in self.expected and len(vol) >= self.expected[fname]:
            self._finish(fname)

    def add_batch(self, batch: Any, output: torch.Tensor) -> None:
        """Every slice of a batch that has a target: ``output`` ``[B, h, w]``; the batch gives ``fname``, ``slice``,
        ``target`` ``[B, 1, h, w]``, ``has_target``, ``zero_filled`` ``[B, 1, h, w]`` (the input of the examples)
        and, when present, ``target_noiseless`` ``[B, 1, h, w]``."""
        target = batch["target"][:, 0]
        zero_filled = batch.get("zero_filled") if hasattr(batch, "get") else None
        noiseless = batch.get("target_noiseless") if hasattr(batch, "get") else None
        for i, (fname, sl) in enumerate(zip(batch["fname"], batch["slice"])):
            if bool(batch["has_target"][i]):
                self.add(fname, int(sl), output[i], target[i], None if zero_filled is None else zero_filled[i, 0],
                         None if noiseless is None else noiseless[i, 0])

    def _finish(self, fname: str) -> None:
        vol = self._slices.pop(fname)
        order = sorted(vol)
        pred = np.stack([vol[s][0] for s in order])
        target = np.stack([vol[s][1] for s in order])
        self.results[fname] = volume_metrics(target, pred)
        rows = slice_metrics(target, pred) if self.slice_rows else []
        if all(vol[s][3] is not None for s in order):
            clean = np.stack([vol[s][3] for s in order])
            self.results[fname].update(_suffixed(volume_metrics(clean, pred)))
            for row, extra in zip(rows, slice_metrics(clean, pred)):
                row.update(_suffixed(extra))
        for s, row in zip(order, rows):
            self.slices.append({"group": self.group, "fname": fname, "slice": int(s), **row})
        mid = order[len(order) // 2]
        if len(self.examples) < self.max_examples and vol[mid][2] is not None:
            self.examples[fname] = {"target": vol[mid][1], "input": vol[mid][2], "output": vol[mid][0],
                                    "maxval": np.float64(target.max())}  # the metrics' data range

    def finish(self) -> dict[str, dict[str, float]]:
        """Score the volumes still open (e.g. partial ones under ``limit_val_batches``) and return all results."""
        for fname in sorted(self._slices):
            self._finish(fname)
        return self.results


Scored = tuple[dict[str, dict[str, float]], list[dict[str, Any]], dict[str, dict[str, np.ndarray]]]


def score_batches(reconstruct: Callable[[Any], torch.Tensor], batches: Iterable[Any], group: str = "all",
                  examples: int = 1) -> Scored:
    """Reconstruct and score every batch (a study's test split): ``(groups, slice rows, examples)``.

    ``reconstruct(batch) -> [B, h, w]`` in data units; ``groups`` is ``{group: mean_metrics(volumes)}`` (empty when
    no slice had a target), the slice rows carry ``group``, and ``examples`` holds ``{group: {"target", "input",
    "output"}}`` of the middle slice of the first volume (when ``examples`` > 0).
    """
    collector = VolumeCollector(slice_rows=True, examples=examples, group=group)
    with torch.no_grad():
        for batch in batches:
            collector.add_batch(batch, reconstruct(batch))
    results = collector.finish()
    groups = {group: mean_metrics(results.values())} if results else {}
    shown = {group: next(iter(collector.examples.values()))} if collector.examples else {}
    return groups, collector.slices, shown


def _suffixed(metrics: dict[str, float]) -> dict[str, float]:
    return {k + NOISELESS: v for k, v in metrics.items()}


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def gather_volume_metrics(results: dict[str, dict[str, float]],
                          extra: Any = None) -> tuple[dict[str, dict[str, float]], list[Any]]:
    """All ranks' per-volume results (sorted by volume) and the list of every rank's ``extra`` (DDP-safe)."""
    parts = [(results, extra)]
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (results, extra))
    merged: dict[str, dict[str, float]] = {}
    for res, _ in parts:
        merged.update(res)
    return dict(sorted(merged.items())), [e for _, e in parts]


def summarise_volumes(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean and sample standard deviation (``ddof = 1``, NaN for one volume; :mod:`mrlearn.evaluation.spread`) over
    volumes of each metric (``nmse``, ``nmse_std``, ...) that every volume has (the noiseless metrics only when all
    volumes have them)."""
    out: dict[str, float] = {}
    if not results:
        return out
    keys = [k for k in next(iter(results.values())) if all(k in r for r in results.values())]
    for key in keys:
        values = np.array([r[key] for r in results.values()], dtype=np.float64)
        out[key] = float(values.mean())
        out[f"{key}_std"] = sample_std(values)
    return out


def mean_metrics(per_volume: Iterable[dict[str, float]]) -> dict[str, float]:
    """Mean over volumes of each metric plus ``volumes`` (the count); empty input gives ``{}``.

    The noiseless metrics (``psnr_noiseless`` ...) are averaged too when every volume has them; when only some
    volumes have them they are left out (a mean over a different set of volumes would not be comparable).
    """
    rows = list(per_volume)
    if not rows:
        return {}
    out = {k: float(np.mean([r[k] for r in rows])) for k in METRIC_NAMES} | {"volumes": len(rows)}
    if all(all(k in r for k in NOISELESS_METRIC_NAMES) for r in rows):
        out |= {k: float(np.mean([r[k] for r in rows])) for k in NOISELESS_METRIC_NAMES}
    return out
