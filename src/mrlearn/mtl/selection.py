"""Per-task model selection of multi-task runs: which weights score each task, and the per-task record.

Multi-task and pooled models (one model, several data tasks) are fitted with
:class:`~mrlearn.engine.task_selection.TaskSelection`: each task ``t`` is selected and stopped on its own validation
metric (``<monitor>/<t>``, e.g. ``val_psnr/scarce``; the run's monitor must be one the module logs per task:
``val_psnr``, ``val_ssim`` or ``val_nmse``) and scored with its own ``checkpoints/best_<t>.ckpt``.
Single-task models and the transfer phases are fitted with the run's usual ``Convergence`` (a single-task model has
one task; a fine-tuning phase trains the last task only); their record per task is built from that.

``task_selection`` in ``metrics.json`` and the per-group convergence record of ``study.csv``: per task
``best_step`` (optimizer steps of the run; a transfer run counts its pretraining steps first), ``best_score``,
``samples_at_best`` (training samples of that task seen at its best validation), ``stop_step``, ``stopped_by``,
``converged``, ``monitor`` and ``checkpoint`` (the weights that scored it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mrlearn.engine.convergence import Convergence
from mrlearn.engine.task_selection import samples_at_best
from mrlearn.errors import input_error

PER_TASK = ("val_psnr", "val_ssim", "val_nmse")


def task_monitors(monitor: str, names: list[str]) -> dict[str, str]:
    """Task -> the metric its selection watches: ``<monitor>/<task>`` (one-line error for a monitor not logged per
    task)."""
    if monitor not in PER_TASK:
        raise input_error("trainer.early_stopping.monitor", f"{monitor!r} is not logged per task, so each task "
                          "cannot be selected on its own validation", f"use one of {', '.join(PER_TASK)}")
    return {name: f"{monitor}/{name}" for name in names}


def single_record(conv: Convergence | None, record: dict[str, Any], checkpoint: str | None,
                  offset: int = 0) -> dict[str, Any]:
    """The per-task record of a model trained on one task (a single-task model, a fine-tuning phase) from its
    ``Convergence`` and engine record; ``offset``: optimizer steps taken before this fit (transfer pretraining)."""
    series = conv.series if conv is not None else []
    best = record.get("best_step")
    return {"monitor": record.get("monitor"), "mode": record.get("mode"),
            "best_step": None if best is None else int(best) + offset, "best_score": record.get("best_score"),
            "samples_at_best": samples_at_best(conv) if conv is not None else None, "checkpoint": checkpoint,
            "stop_step": int(record.get("steps") or 0) + offset if series else None,
            "stop_samples": conv.samples if conv is not None and series else None,
            "stopped_by": record.get("stopped_by"), "converged": record.get("converged"),
            "validations": len(series), "lr_reductions": record.get("lr_reductions")}


def group_records(selection: dict[str, dict[str, Any]], samples: dict[str, int],
                  fallback: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Per task the convergence record ``study.csv`` shows (``study.results.convergence``): the task's own
    ``best_step``, ``samples_at_best``, ``stopped_by``, ``converged``, ``monitor``, ``best_score``, the run's
    ``steps`` and ``samples_per_task``; tasks without a record of their own take ``fallback`` (the run's)."""
    out = {}
    for name in samples:
        own = selection.get(name)
        rec = dict(fallback or {}) if own is None else {
            "steps": (fallback or {}).get("steps"), **{k: own.get(k) for k in
                                                      ("best_step", "samples_at_best", "stopped_by", "converged",
                                                       "monitor", "best_score")}}
        rec["samples_per_task"] = samples
        out[name] = rec
    return out


def checkpoint_of(run_dir: Path, name: str) -> Path | None:
    """``<run>/checkpoints/best_<name>.ckpt`` when it was written."""
    path = Path(run_dir) / "checkpoints" / f"best_{name}.ckpt"
    return path if path.is_file() else None
