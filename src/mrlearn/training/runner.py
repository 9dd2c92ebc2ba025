"""Supervised and unrolled training (``mrlearn train``) on the shared engine (:mod:`mrlearn.engine`).

Run folder (``cfg.run_dir()``, held through :class:`~mrlearn.engine.runfolder.RunFolder`: lock, ``config.yaml``,
``run.json`` running / finished / failed / interrupted):
  ``metrics.json``: ``final`` (validation metrics of the evaluated weights: ``best.ckpt`` by default,
  ``trainer.final_weights``), ``evaluated`` (which weights), ``volumes`` (per volume), the convergence record
  (``steps``, ``best_step``, ``stopped_by``, ``converged``, ...; :func:`mrlearn.engine.convergence.convergence_record`),
  ``validation_curve`` (every validation of the monitored metric), ``best`` and per-epoch ``history``;
  ``checkpoints/last.ckpt`` and ``checkpoints/best.ckpt`` (atomic, always finite); the logger's folder.
``resume=True`` continues from ``checkpoints/last.ckpt``: weights, optimizer, scheduler, loop counters, history,
convergence state and the position inside the interrupted epoch (the sampler skips the batches already trained), so
the result equals an uninterrupted run on CPU.

Other method families build on the same pieces: :func:`build_method`, :func:`make_trainer` (re-exported from
:mod:`mrlearn.engine.trainer`), :func:`quiet_lightning`, :func:`evaluate_final`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L

from mrlearn import registry
from mrlearn.config import ExperimentConfig, dump_config
from mrlearn.engine.checkpoint import AtomicCheckpoint, load_checkpoint, load_weights
from mrlearn.engine.cluster import newest_checkpoint
from mrlearn.engine.convergence import Convergence, convergence_record, find_callback
from mrlearn.engine.preflight import check_targets, check_world_size, fit_errors
from mrlearn.engine.runfolder import RunFolder
from mrlearn.engine.signals import GracefulStop
from mrlearn.engine.trainer import make_trainer, quiet_lightning, resolve_precision
from mrlearn.errors import MrlearnError, input_error
from mrlearn.io import write_json
from mrlearn.training.data import ReconDataModule, resolve_data_folders
from mrlearn.training.module import ReconModule

__all__ = ["TrainResult", "build_method", "make_trainer", "quiet_lightning", "resolve_precision", "train",
           "evaluate_final", "make_datamodule", "last_validation", "load_module", "config_for_checkpoint",
           "resume_checkpoint"]


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict[str, float]
    volumes: dict[str, dict[str, float]]
    history: list[dict[str, float]]
    last_checkpoint: Path
    best_checkpoint: Path | None
    module: ReconModule | None = field(default=None, repr=False)
    rank: int = 0  # global rank of this process (DDP): only rank 0 writes files and prints summaries
    convergence: dict[str, Any] = field(default_factory=dict)


def build_method(cfg: ExperimentConfig, init: bool = True) -> ReconModule:
    """The LightningModule of ``cfg.method`` around the model ``cfg.model`` and loss ``cfg.method.loss``.

    ``model.init`` (a weights file) is loaded into the model before the method wraps it (``init=False``: not, for
    callers that load a checkpoint's weights next).
    """
    section = {k: v for k, v in cfg.model.items() if k != "init"} if isinstance(cfg.model, dict) else cfg.model
    model = registry.build("model", section, "model")
    if init and isinstance(cfg.model, dict) and cfg.model.get("init"):
        from mrlearn.models.weights import load_init_weights

        load_init_weights(model, cfg.model["init"], registry.section_name(section, "model"))
    loss = registry.build("loss", cfg.method.get("loss") or {"name": "l1"}, "method.loss")
    section = {k: v for k, v in cfg.method.items() if k != "loss"}
    return registry.build("method", section, "method", model=model, loss=loss, cfg=cfg)


def resume_checkpoint(run_dir: Path, resume: bool, max_epochs: int | None = None) -> Path | None:
    """``last.ckpt`` to resume from (validated), None to start from step 0; one-line errors otherwise.

    Checked before the run folder is touched: a checkpoint further on than ``max_epochs`` (Lightning refuses it)
    is an error naming ``trainer.max_epochs``, and the folder's ``run.json`` / ``config.yaml`` stay as they were."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if not resume:
        return None
    newest = newest_checkpoint(run_dir, load_checkpoint)  # last.ckpt, or a newer SLURM pre-emption checkpoint
    if newest is None and last.is_file():
        load_checkpoint(last)  # empty / truncated / foreign files: one line before Lightning sees them
    if newest is not None:
        last = newest
        ckpt = load_checkpoint(last)
        progress = ((ckpt.get("loops") or {}).get("fit_loop") or {}).get("epoch_progress") or {}
        done = int((progress.get("current") or {}).get("completed", ckpt.get("epoch", 0)))
        if max_epochs is not None and max_epochs >= 0 and done > max_epochs:
            raise input_error("trainer.max_epochs", f"{max_epochs} is below the {done} epochs {last} has already "
                              "trained", f"set trainer.max_epochs to {done + 1} or more to continue the run")
        return last
    if (run_dir / "run.json").is_file():
        print(f"mrlearn: {run_dir}: no checkpoint was written before the run stopped; starting it from step 0",
              file=sys.stderr)
        return None
    raise input_error(last, "no checkpoint to resume from", "run without --resume to start the run")


def evaluate_final(cfg: ExperimentConfig, trainer: L.Trainer, module: L.LightningModule, datamodule: Any,
                   ckpt: AtomicCheckpoint) -> dict[str, Any]:
    """Validate the weights the run reports (``best.ckpt`` unless ``trainer.final_weights: last``).

    Returns ``{"weights": "best"|"last", "checkpoint": path, "step": int, "metrics": {...}}``; the module holds the
    evaluated weights afterwards (its per-volume results too).
    """
    use_best = cfg.trainer.final_weights == "best" and ckpt.best_path and Path(ckpt.best_path).is_file()
    path = Path(ckpt.best_path) if use_best else ckpt.last_path
    weights = load_checkpoint(path)
    load_weights(module, weights["state_dict"], path)
    stop = find_callback(trainer, GracefulStop)
    if stop is not None:
        stop.install()  # a signal during the final evaluation still ends as "interrupted"
    try:
        logged = trainer.validate(module, datamodule=datamodule, verbose=False)
    finally:
        if stop is not None:
            stop.restore()
    metrics = dict(getattr(module, "last_eval", None) or (logged[0] if logged else {}))
    return {"weights": "best" if use_best else "last", "checkpoint": str(path), "step": int(weights.get("global_step", -1)),
            "metrics": {k: float(v) for k, v in metrics.items()}}


def train(cfg: ExperimentConfig, resume: bool = False, callbacks: Sequence[L.Callback] = ()) -> TrainResult:
    """Fit ``cfg`` in its run folder; returns the metrics and where the outputs are (see the module docstring)."""
    cfg = resolve_data_folders(cfg)  # fastMRI's single-/multi-coil folders: config.yaml names those read
    run_dir = cfg.run_dir()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_method(cfg, init=not (resume and (run_dir / "checkpoints" / "last.ckpt").is_file()))
    datamodule = make_datamodule(cfg, module)
    trainer, ckpt_cb = make_trainer(cfg, run_dir, callbacks, monitor=getattr(module, "checkpoint_monitor", ("val_ssim", "max")),
                                    unused_parameters=getattr(module, "ddp_unused_parameters", False))
    ckpt_path = resume_checkpoint(run_dir, resume, cfg.trainer.max_epochs) if trainer.is_global_zero else (
        newest_checkpoint(run_dir, load_checkpoint) if resume else None)  # the same file on every rank
    with RunFolder(run_dir, dump_config(cfg), cfg.seed, resume=resume, rank=trainer.global_rank,
                   extra={"name": cfg.name, "resumed": resume}) as run:
        if isinstance(datamodule, ReconDataModule):
            if getattr(module, "requires_target", False):
                check_targets(datamodule.dataset("train").slices, "train")
            check_world_size(trainer.world_size, datamodule.dataset("val").slices, "val")
        if ckpt_path is not None and hasattr(datamodule, "resume_at"):
            datamodule.resume_at(int(load_checkpoint(ckpt_path).get("global_step", 0)))
        with fit_errors(cfg):
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
            record = convergence_record(trainer, find_callback(trainer, Convergence), ckpt_cb)
            history = module.history_list()
            evaluated = evaluate_final(cfg, trainer, module, datamodule, ckpt_cb)
        metrics = evaluated.pop("metrics")
        result = TrainResult(run_dir, metrics, module.volume_results, history, ckpt_cb.last_path,
                             Path(ckpt_cb.best_path) if ckpt_cb.best_path else None, module, int(trainer.global_rank),
                             record)
        if trainer.is_global_zero:
            conv = find_callback(trainer, Convergence)
            write_json(run_dir / "metrics.json", {
                "final": metrics, "evaluated": evaluated, **record, "volumes": module.volume_results,
                "best": {"monitor": ckpt_cb.monitor, "score": ckpt_cb.best_score, "checkpoint": ckpt_cb.best_path,
                         "step": ckpt_cb.best_step},
                "validation_curve": [{"step": int(s), "epoch": int(e), conv.monitor: v} for s, e, v in conv.series] if conv else [],
                "history": history})
            run.finished(global_step=int(trainer.global_step), epochs=int(trainer.current_epoch),
                         stopped_by=record["stopped_by"], converged=record["converged"])
    return result


def make_datamodule(cfg: ExperimentConfig, module: L.LightningModule) -> L.LightningDataModule:
    """The method's own data module (``module.make_datamodule(cfg)``, e.g. multi-task), else ``ReconDataModule``
    with the method's sample transform (``module.build_transform``, e.g. layer-wise SENSE samples) if it has one."""
    if hasattr(module, "make_datamodule"):
        return module.make_datamodule(cfg)
    return ReconDataModule(cfg, keep_kspace=module.keep_kspace, transform_factory=getattr(module, "build_transform", None))


def last_validation(history: list[dict[str, float]]) -> dict[str, float]:
    """The ``val_*`` entries of the last epoch that ran validation (empty when none did)."""
    for entry in reversed(history):
        vals = {k: v for k, v in entry.items() if k.startswith("val_")}
        if vals:
            return vals
    return {}


def load_module(checkpoint: str | Path, cfg: ExperimentConfig) -> ReconModule:
    """A method module for ``cfg`` with the weights of ``checkpoint`` (``weights_only=True``), in eval mode."""
    ckpt = load_checkpoint(checkpoint)
    module = build_method(cfg, init=False)  # the checkpoint's weights replace model.init's
    load_weights(module, ckpt["state_dict"], checkpoint)
    return module.eval()


def config_for_checkpoint(checkpoint: str | Path) -> ExperimentConfig:
    """The resolved config saved beside a checkpoint (``<run>/config.yaml`` for ``<run>/checkpoints/x.ckpt``)."""
    from mrlearn.config import load_config

    ck = Path(checkpoint)
    for candidate in (ck.parent / "config.yaml", ck.parent.parent / "config.yaml"):
        if candidate.is_file():
            return load_config(candidate)
    raise MrlearnError(f"{ck}: no config.yaml beside the checkpoint or in its run folder; pass --config with the training config")
