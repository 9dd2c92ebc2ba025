"""Run an experiment config with Lightning: build everything from the registry, fit, write the run folder.

Run folder (``cfg.run_dir()``):
  ``config.yaml`` (resolved config), ``run.json`` (seed, versions, git revision, status running/finished/failed),
  ``metrics.json`` (final validation metrics per volume and their means, best checkpoint, per-epoch history),
  ``checkpoints/last.ckpt`` and ``checkpoints/best.ckpt`` (atomic), ``tensorboard/`` (scalars and image grids).
``resume=True`` continues from ``checkpoints/last.ckpt``: weights, optimizer, scheduler, loop counters, history
and the position inside the interrupted epoch (the sampler skips the batches already trained), so the result
equals an uninterrupted run on CPU.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch

from mrlearn import registry
from mrlearn.config import ExperimentConfig, dump_config
from mrlearn.errors import MrlearnError, input_error
from mrlearn.training.checkpoint import AtomicCheckpoint, load_checkpoint, load_weights
from mrlearn.training.data import ReconDataModule
from mrlearn.training.module import ReconModule
from mrlearn.training.runfiles import RunInfo, atomic_write_text, write_json


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


def build_method(cfg: ExperimentConfig) -> ReconModule:
    """The LightningModule of ``cfg.method`` around the model ``cfg.model`` and loss ``cfg.method.loss``."""
    model = registry.build("model", cfg.model, "model")
    loss = registry.build("loss", cfg.method.get("loss") or {"name": "l1"}, "method.loss")
    section = {k: v for k, v in cfg.method.items() if k != "loss"}
    return registry.build("method", section, "method", model=model, loss=loss, cfg=cfg)


def resolve_precision(cfg: ExperimentConfig) -> str:
    """``auto``: bf16-mixed on a CUDA device that supports it, else 32-true."""
    p = cfg.trainer.precision
    if p != "auto":
        return p
    wants_gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def make_trainer(cfg: ExperimentConfig, run_dir: Path, callbacks: Sequence[L.Callback] = (),
                 monitor: tuple[str, str] = ("val_ssim", "max")) -> tuple[L.Trainer, AtomicCheckpoint]:
    """The Lightning Trainer for ``cfg`` with the atomic checkpoint callback and a TensorBoard logger."""
    from lightning.pytorch.loggers import TensorBoardLogger

    t = cfg.trainer
    ckpt = AtomicCheckpoint(run_dir / "checkpoints", every_n_steps=t.checkpoint_every_n_steps, monitor=monitor[0], mode=monitor[1])
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    strategy: Any = t.strategy
    if strategy == "ddp" and t.accelerator == "cpu":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo")
    try:
        trainer = L.Trainer(
            default_root_dir=str(run_dir), max_epochs=t.max_epochs, max_steps=t.max_steps, devices=t.devices,
            accelerator=t.accelerator, strategy=strategy, precision=resolve_precision(cfg),
            gradient_clip_val=t.gradient_clip_val, check_val_every_n_epoch=t.val_every, deterministic=t.deterministic,
            log_every_n_steps=t.log_every_n_steps, limit_train_batches=t.limit_train_batches,
            limit_val_batches=t.limit_val_batches, num_sanity_val_steps=0, use_distributed_sampler=False,
            enable_progress_bar=t.progress_bar, enable_model_summary=False, callbacks=[ckpt, *callbacks],
            logger=TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False),
        )
    except (ValueError, TypeError, RuntimeError) as exc:  # Lightning's MisconfigurationException is a ValueError
        raise input_error("trainer", str(exc).splitlines()[0], "fix the trainer section (devices, strategy, accelerator, precision)") from None
    return trainer, ckpt


def train(cfg: ExperimentConfig, resume: bool = False, callbacks: Sequence[L.Callback] = ()) -> TrainResult:
    """Fit ``cfg``; returns the metrics and where the outputs are. Marks ``run.json`` failed on any error."""
    run_dir = cfg.run_dir()
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise input_error(last, "no checkpoint to resume from", "run without --resume to start the run")
    if not resume and last.is_file():
        raise input_error(run_dir, "already holds a run (checkpoints/last.ckpt)", "pass --resume to continue it or choose another --out")
    quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_method(cfg)
    datamodule = make_datamodule(cfg, module)
    trainer, ckpt_cb = make_trainer(cfg, run_dir, callbacks, monitor=getattr(module, "checkpoint_monitor", ("val_ssim", "max")))
    info = RunInfo(run_dir, cfg.seed, {"name": cfg.name, "resumed": resume}) if trainer.is_global_zero else None
    if info is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
        info.running()
    ckpt_path = None
    if resume:
        ckpt = load_checkpoint(last)
        load_weights(module, ckpt["state_dict"], last)
        if hasattr(datamodule, "resume_at"):
            datamodule.resume_at(int(ckpt.get("global_step", 0)))
        ckpt_path = str(last)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if trainer.interrupted:
            raise KeyboardInterrupt
    except BaseException as exc:
        if info is not None:
            info.failed(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
        raise
    metrics = last_validation(module.history_list())
    result = TrainResult(run_dir, metrics, module.volume_results, module.history_list(), last,
                         Path(ckpt_cb.best_path) if ckpt_cb.best_path else None, module, int(trainer.global_rank))
    if info is not None:
        write_json(run_dir / "metrics.json", {"final": metrics, "volumes": module.volume_results,
                                              "best": {"monitor": ckpt_cb.monitor, "score": ckpt_cb.best_score,
                                                       "checkpoint": ckpt_cb.best_path},
                                              "history": module.history_list()})
        info.finished(global_step=int(trainer.global_step), epochs=int(trainer.current_epoch))
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


def quiet_lightning() -> None:
    """Keep Lightning's info chatter (tips, device lines) out of the command output; warnings stay."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def load_module(checkpoint: str | Path, cfg: ExperimentConfig) -> ReconModule:
    """A method module for ``cfg`` with the weights of ``checkpoint`` (``weights_only=True``), in eval mode."""
    ckpt = load_checkpoint(checkpoint)
    module = build_method(cfg)
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
