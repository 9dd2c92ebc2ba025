"""The one Lightning Trainer set-up shared by every method family.

:func:`make_trainer` builds the Trainer of a config with the engine's callbacks, in this order of duty:

* :class:`~mrlearn.engine.checkpoint.AtomicCheckpoint`: ``last.ckpt`` / ``best.ckpt``, atomic and always finite;
* :class:`~mrlearn.engine.signals.GracefulStop`: SIGTERM/SIGINT -> resumable checkpoint + ``RunInterrupted``;
* :class:`~mrlearn.engine.convergence.Convergence`: validation series, early stopping
  (``trainer.early_stopping: {monitor, mode, patience | patience_samples, min_delta, smoothing,
  smoothing_window}``: :mod:`mrlearn.early_stopping`) and reduce-on-plateau learning rates (``lr_patience``,
  ``lr_factor``, ``max_lr_cuts``; each cut restarts the patience window);
* ``trainer.compile: true``: the networks compiled in place (:mod:`mrlearn.engine.compile`);
* progress (:mod:`mrlearn.engine.progress`): a line on stderr at most every ``trainer.progress_every`` seconds
  (step/total, epoch, the monitored validation score, elapsed, ETA; 0: none), or the tqdm bar on a terminal
  outside a study with ``trainer.progress_bar``; and the logger chosen by ``trainer.logger`` (``tensorboard``
  (default), ``csv``, ``mlflow`` where installed).

Validation runs every ``trainer.val_every`` epochs, or every ``trainer.val_every_n_steps`` optimizer steps when set;
caps: ``max_epochs``, ``max_steps``, ``max_time`` (seconds, or Lightning's ``"DD:HH:MM:SS"``).
Options a machine cannot honour (``--accelerator gpu`` without a GPU) are one-line errors here, before any work.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch

from mrlearn.engine.checkpoint import AtomicCheckpoint, PlainCheckpointIO
from mrlearn.engine.cluster import cluster_plugins
from mrlearn.engine.compile import CompileNetworks, check_compile
from mrlearn.early_stopping import DEFAULT_PATIENCE
from mrlearn.engine.convergence import Convergence, default_mode
from mrlearn.engine.progress import progress_callbacks
from mrlearn.engine.signals import GracefulStop
from mrlearn.errors import input_error

LOGGERS = ("tensorboard", "csv", "mlflow")


def quiet_lightning() -> None:
    """Keep Lightning's info chatter (tips, device lines) out of the command output; warnings stay."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")


def resolve_precision(cfg: Any) -> str:
    """``auto``: bf16-mixed on a CUDA device that supports it, else 32-true."""
    p = cfg.trainer.precision
    if p != "auto":
        return p
    wants_gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def check_accelerator(accelerator: str) -> None:
    """One-line errors for an accelerator this machine does not have."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise input_error("trainer.accelerator", f"{accelerator!r} requested but no CUDA GPU is available here",
                          "use --accelerator cpu (or auto)")
    if accelerator == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise input_error("trainer.accelerator", "'mps' requested but Apple's MPS backend is not available here",
                          "use --accelerator cpu (or auto)")
    if accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
        raise input_error("trainer.accelerator", f"{accelerator!r} is not supported",
                          "use auto, cpu, gpu (cuda) or mps")


def make_logger(kind: str, run_dir: Path, name: str = "run") -> Any:
    """The Lightning logger ``kind`` writing under ``run_dir`` (``tensorboard/``, ``csv/`` or ``mlruns/``)."""
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
    if kind == "csv":
        from mrlearn.engine.csvlog import ResumableCSVLogger

        return ResumableCSVLogger(save_dir=str(run_dir), name="csv", version="")
    if kind == "mlflow":
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise input_error("trainer.logger", "mlflow is not installed",
                              "pip install mlflow, or use trainer.logger=tensorboard or csv") from None
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(experiment_name=name, tracking_uri=(Path(run_dir).resolve() / "mlruns").as_uri())
    raise input_error("trainer.logger", f"unknown logger {kind!r}", f"choose one of: {', '.join(LOGGERS)}")


def _max_time(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    import datetime as _dt

    if value <= 0:
        raise input_error("trainer.max_time", f"{value} is not a positive number of seconds", "e.g. 3600 or '00:01:00:00'")
    return _dt.timedelta(seconds=float(value))


def _monitor(cfg: Any, monitor: tuple[str, str]) -> tuple[str, str, Any]:
    """(metric, mode, early-stopping section or None): the early-stopping metric names the best checkpoint too."""
    es = getattr(cfg.trainer, "early_stopping", None)
    name, mode = monitor
    if es is not None and es.monitor:
        mode = es.mode or (mode if es.monitor == name else default_mode(es.monitor))
        name = es.monitor
    elif es is not None and es.mode:
        mode = es.mode
    return name, mode, es


#: Lightning's DDP strategy names -> the process start method
_DDP_START = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}
_UNUSED = ("_find_unused_parameters_true", "_find_unused_parameters_false")


def ddp_strategy(name: Any, accelerator: str, unused_parameters: bool = False) -> Any:
    """The Lightning strategy for ``trainer.strategy`` ``name``: DDP names become a ``DDPStrategy`` (gloo on CPU).

    ``unused_parameters``: the method leaves some trainable parameters without a gradient in some steps (greedy
    layer-wise: the frozen blocks; multi-task loss weightings: the parameters of a task absent from a batch). DDP
    then runs with ``find_unused_parameters=True``: a parameter unused on every process keeps ``grad = None`` (the
    optimizer skips it, as one process does) and one unused on some processes only gets their average with zeros
    for the others. Any other strategy (``auto``, ``fsdp``, ...) is passed to Lightning unchanged.
    """
    if not isinstance(name, str):
        return name
    base, suffix = name, ""
    for tail in _UNUSED:
        if name.endswith(tail):
            base, suffix = name[: -len(tail)], tail
    if base not in _DDP_START:
        return name
    if unused_parameters and suffix == _UNUSED[1]:
        raise input_error("trainer.strategy", f"{name!r} cannot train this method: some of its parameters get no "
                          "gradient in some steps (frozen blocks, a task absent from a batch)",
                          f"use {base} (unused parameters are then found by DDP)")
    find = unused_parameters or suffix == _UNUSED[0]
    cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not (cpu or find or suffix):
        return name
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(start_method=_DDP_START[base], find_unused_parameters=find,
                       process_group_backend="gloo" if cpu else None)


def make_trainer(cfg: Any, run_dir: Path, callbacks: Sequence[L.Callback] = (),
                 monitor: tuple[str, str] = ("val_ssim", "max"),
                 unused_parameters: bool = False) -> tuple[L.Trainer, AtomicCheckpoint]:
    """The Lightning Trainer for ``cfg`` with the engine's callbacks (see the module docstring).

    ``monitor``: the method's ``(metric, "max" | "min")`` for ``best.ckpt`` (``trainer.early_stopping.monitor``
    replaces it when given). ``unused_parameters``: the method's ``ddp_unused_parameters`` (see
    :func:`ddp_strategy`). Returns ``(trainer, checkpoint_callback)``; the :class:`Convergence` and
    :class:`GracefulStop` callbacks are in ``trainer.callbacks`` (see ``engine.convergence.convergence_record``).
    """
    t = cfg.trainer
    run_dir = Path(run_dir)
    quiet_lightning()  # every path to a Trainer (layer-wise, qMRI, ...), not only mrlearn train
    check_accelerator(t.accelerator)
    name, mode, es = _monitor(cfg, monitor)
    stop = GracefulStop(run_dir)
    ckpt = AtomicCheckpoint(run_dir / "checkpoints", every_n_steps=t.checkpoint_every_n_steps, monitor=name, mode=mode,
                            stop=stop)
    convergence = Convergence(name, mode) if es is None else Convergence(
        name, mode, patience=DEFAULT_PATIENCE if es.patience is None and es.patience_samples is None else es.patience,
        min_delta=es.min_delta, lr_patience=es.lr_patience, lr_factor=es.lr_factor,
        relative=es.relative, patience_samples=es.patience_samples, smoothing=es.smoothing,
        smoothing_window=es.smoothing_window, max_lr_cuts=es.max_lr_cuts)
    progress, bar = progress_callbacks(t.progress_bar, getattr(t, "progress_every", None), (name, mode))
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Deterministic algorithms stay on; filling every new tensor with NaN first (a debugging aid that costs
        # 3-6 % of a CPU step) does not change any result, since kernels overwrite what they allocate.
        torch.utils.deterministic.fill_uninitialized_memory = False
    compiling = [CompileNetworks()] if getattr(t, "compile", False) else []
    if compiling:
        check_compile(t.accelerator)
    strategy = ddp_strategy(t.strategy, t.accelerator, unused_parameters)
    every_steps = getattr(t, "val_every_n_steps", None)
    validation = ({"val_check_interval": int(every_steps), "check_val_every_n_epoch": None} if every_steps
                  else {"check_val_every_n_epoch": t.val_every})
    logger = make_logger(getattr(t, "logger", "tensorboard"), run_dir, getattr(cfg, "name", "run"))
    try:
        trainer = L.Trainer(
            default_root_dir=str(run_dir), max_epochs=t.max_epochs, max_steps=t.max_steps,
            max_time=_max_time(getattr(t, "max_time", None)), devices=t.devices, accelerator=t.accelerator,
            num_nodes=int(getattr(t, "num_nodes", 1) or 1),
            strategy=strategy, precision=resolve_precision(cfg), gradient_clip_val=t.gradient_clip_val,
            deterministic=t.deterministic, log_every_n_steps=t.log_every_n_steps,
            limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches, num_sanity_val_steps=0,
            use_distributed_sampler=False, enable_progress_bar=bar, enable_model_summary=False,
            callbacks=[*compiling, *callbacks, convergence, stop, *progress, ckpt], logger=logger,
            plugins=[PlainCheckpointIO(), *cluster_plugins()],
            **validation,
        )
    except (ValueError, TypeError, RuntimeError) as exc:  # Lightning's MisconfigurationException is a ValueError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise input_error("trainer", first, "fix the trainer section (devices, strategy, accelerator, precision)") from None
    return trainer, ckpt
