"""Runs of several fits (phases) that resume where they stopped: the rules every multi-phase study runner follows.

A study run may train several models one after another, each in its own folder below the run folder (two-step
reconstruction then segmentation, one end-to-end network per depth, one qMRI network per label and SNR). The run
folder itself is held by :func:`run_folder` (``run.json`` running / finished / interrupted, ``config.yaml``), so the
study (:mod:`mrlearn.study.resume`) can tell a killed run from a finished one and call the runner with
``resume=True``. Then, phase by phase:

* a phase whose folder is finished (:func:`is_finished`: ``run.json`` status ``finished`` and ``metrics.json``
  written) is not trained again: :func:`finished_result` reads back what :func:`~mrlearn.training.runner.train`
  returned (the weights it reported, loaded from their checkpoint; its validation metrics and convergence record);
* a phase that holds a run but did not finish continues from its checkpoint with the exact state
  (:func:`train_phase`: ``train(cfg, resume=True)``, Lightning's ``ckpt_path``);
* a phase not started yet starts from step 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from mrlearn.config import ExperimentConfig, dump_config
from mrlearn.engine.runfolder import RUN_MARKERS, RunFolder
from mrlearn.io import read_json

#: keys of ``train``'s ``metrics.json`` that are not its convergence record
_NOT_RECORD = frozenset({"final", "evaluated", "volumes", "best", "validation_curve", "history"})


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a started run (``run.json``, ``checkpoints/last.ckpt`` or ``metrics.json``)."""
    return any((Path(run_dir) / marker).exists() for marker in RUN_MARKERS)


def is_finished(run_dir: str | Path) -> bool:
    """Whether the fit in ``run_dir`` finished: ``run.json`` says ``finished`` and ``metrics.json`` was written."""
    info = read_json(Path(run_dir) / "run.json") or {}
    return info.get("status") == "finished" and (Path(run_dir) / "metrics.json").is_file()


def run_folder(cfg: ExperimentConfig, resume: bool, runner: str) -> RunFolder:
    """The :class:`RunFolder` of a multi-phase run (``cfg.run_dir()``; its phases hold folders of their own). Under
    DDP every rank runs the whole run; rank 0 alone holds and writes the folder (the rank the launcher set, known
    before any Trainer exists)."""
    from mrlearn.engine.cluster import process_rank

    return RunFolder(cfg.run_dir(), dump_config(cfg), cfg.seed, resume=resume, rank=process_rank(),
                     extra={"name": cfg.name, "runner": runner, "resumed": resume})


def finished_result(cfg: ExperimentConfig) -> Any:
    """The :class:`~mrlearn.training.runner.TrainResult` of the finished fit of ``cfg`` (in ``cfg.run_dir()``), read
    back from its ``metrics.json`` and checkpoints: the module holds the weights the fit reported."""
    from mrlearn.errors import input_error
    from mrlearn.training.runner import TrainResult, load_module

    run_dir = cfg.run_dir()
    metrics = read_json(run_dir / "metrics.json") or {}
    evaluated = metrics.get("evaluated") or {}
    ckpts = run_dir / "checkpoints"
    weights = ckpts / ("best.ckpt" if evaluated.get("weights") == "best" else "last.ckpt")
    if "final" not in metrics or not weights.is_file():
        raise input_error(run_dir, f"finished, but its metrics.json or {weights.name} is missing or unreadable",
                          f"delete {run_dir} to train that phase again")
    best = (metrics.get("best") or {}).get("checkpoint")
    record = {k: v for k, v in metrics.items() if k not in _NOT_RECORD}
    return TrainResult(run_dir, dict(metrics["final"]), metrics.get("volumes") or {}, metrics.get("history") or [],
                       ckpts / "last.ckpt", Path(best) if best else None, load_module(weights, cfg), 0, record)


def train_phase(cfg: ExperimentConfig, resume: bool, callbacks: Sequence[Any] = ()) -> Any:
    """One phase of a multi-phase run (module docstring): read back when finished, resumed when started (with
    ``resume``), trained from step 0 otherwise; returns a :class:`~mrlearn.training.runner.TrainResult`."""
    from mrlearn.training.runner import train

    run_dir = cfg.run_dir()
    if resume and is_finished(run_dir):
        return finished_result(cfg)
    return train(cfg, resume=resume and holds_run(run_dir), callbacks=callbacks)
