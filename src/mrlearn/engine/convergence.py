"""Convergence, once for every method family: the validation series, early stopping, and what stopped a run.

:class:`Convergence` (a Lightning callback added by :func:`mrlearn.engine.trainer.make_trainer`) records every
validation of the monitored metric as ``(step, epoch, value)`` and counts the training samples seen (the leading
size of every training batch, times the number of processes). Early stopping follows the plateau rule of
:mod:`mrlearn.engine.plateau`: improvement is decided on a smoothed series (``smoothing``: none, ema, median over
``smoothing_window`` validations), the patience window is counted in validations (``patience``) or in training
samples (``patience_samples``, so it scales with the data and the batch size), and with ``lr_patience`` the learning
rates are multiplied by ``lr_factor`` after every ``lr_patience`` validations without improvement, at most
``max_lr_cuts`` times, each cut restarting the window (the run stops only after a full window at its final rate).
The best checkpoint (``best.ckpt``) follows the raw metric, not the smoothed one. Its state travels in checkpoints
(the learning rates in the optimizer's), so a resumed run continues the same series (and a run that already
stopped early stays stopped).

:func:`convergence_record` gives what every run writes into its ``metrics.json``:

* ``steps`` (optimizer steps done), ``epochs``, ``validations`` (how many), ``samples`` (training samples seen);
* ``best_step`` / ``best_score`` of the raw monitored metric (the step of ``best.ckpt``);
* ``smoothing``, ``smoothed_best`` (best value of the smoothed series), ``patience`` (validations) or
  ``patience_samples``, ``lr_reductions`` (the cuts made);
* ``stopped_at_best``: the last validation was the best raw one (a run that stops there was still creeping up);
* ``stopped_by``: ``early_stopping``, ``max_steps``, ``max_epochs``, ``max_time``, or a cap the method itself
  applies and names in its ``stopped_by_cap`` attribute (e.g. ``max_samples``) (``None`` when none applies);
* ``converged``: True after early stopping; after a cap, False when the smoothed metric was still improving - its
  last improvement lies within the last window (the last validation when no patience is set) - or when no
  validation ran.
"""

from __future__ import annotations

from typing import Any

import lightning as L

from mrlearn.engine.plateau import Plateau, improved  # noqa: F401 - improved re-exported

STOPPED_BY = ("early_stopping", "max_steps", "max_epochs", "max_time", "max_samples")


def default_mode(monitor: str) -> str:
    """``min`` for losses and errors (names containing loss, nmse, mse, mae, error), else ``max``."""
    low = monitor.lower()
    return "min" if any(k in low for k in ("loss", "nmse", "mse", "mae", "error")) else "max"


def batch_samples(batch: Any) -> int:
    """Samples in a training batch: the leading size of its first tensor (a mapping's values, a sequence's items
    or a typed batch's fields, searched in order); 0 when it holds none."""
    import dataclasses

    import torch

    if torch.is_tensor(batch):
        return int(batch.shape[0]) if batch.dim() > 0 else 1
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        batch = [getattr(batch, f.name) for f in dataclasses.fields(batch)]
    elif isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            n = batch_samples(item)
            if n:
                return n
    return 0


class Convergence(L.Callback):
    """Validation series of ``monitor`` and early stopping (``patience`` and ``patience_samples`` None: record
    only, never stop). See the module docstring and :class:`mrlearn.engine.plateau.Plateau`."""

    def __init__(self, monitor: str, mode: str = "max", patience: int | None = None, min_delta: float = 0.0,
                 lr_patience: int | None = None, lr_factor: float = 0.5, relative: bool = False,
                 patience_samples: int | None = None, smoothing: str = "none", smoothing_window: int = 5,
                 max_lr_cuts: int | None = None):
        if lr_patience is not None and (int(lr_patience) < 1 or not 0.0 < float(lr_factor) < 1.0):
            raise ValueError("lr_patience must be at least 1 and lr_factor in (0, 1)")
        self.monitor, self.mode = monitor, mode
        self.plateau = Plateau(mode, patience, patience_samples, min_delta, relative, smoothing, smoothing_window,
                               lr_patience, max_lr_cuts)
        self.patience, self.patience_samples = self.plateau.patience, self.plateau.patience_samples
        self.min_delta, self.relative = float(min_delta), bool(relative)
        self.lr_patience, self.lr_factor = self.plateau.lr_patience, float(lr_factor)
        self.series: list[list[float]] = []  # [step, epoch, value]
        self.samples = 0
        self.stopped_early = False

    @property
    def lr_reductions(self) -> int:
        return self.plateau.cuts

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.samples += batch_samples(batch) * int(getattr(trainer, "world_size", 1) or 1)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metric = trainer.callback_metrics.get(self.monitor)
        if metric is None:
            logged = sorted(k for k in trainer.callback_metrics if k.startswith("val"))
            if logged and not self.series:  # a validation ran and never logs the monitor: stopping would never act
                from mrlearn.errors import input_error

                raise input_error("trainer.early_stopping.monitor", f"{self.monitor!r} is not logged by this method "
                                  f"(its validation logs {', '.join(logged[:8])})", "monitor one of those")
            return
        value = float(metric)
        self.series.append([int(trainer.global_step), int(trainer.current_epoch), value])
        action = self.plateau.push(value, self.samples)
        if action == "stop":
            self.stopped_early = True
            trainer.should_stop = True
        elif action == "cut":
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = group["lr"] * self.lr_factor

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped_early:  # resuming a run that already stopped early: stay stopped
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"series": [list(s) for s in self.series], "samples": self.samples, "stopped_early": self.stopped_early,
                "plateau": self.plateau.state_dict(), "lr_reductions": self.plateau.cuts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.series = [list(s) for s in state_dict.get("series", [])]
        self.samples = int(state_dict.get("samples", 0))
        self.stopped_early = bool(state_dict.get("stopped_early", False))
        if "plateau" in state_dict:
            self.plateau.load_state_dict(state_dict["plateau"])
            self.stopped_early = self.stopped_early and self.plateau.window_used()  # a longer window reopens it
        else:  # a checkpoint of an earlier version: replay its series (its cuts are in the optimizer's rates)
            for _, _, value in self.series:
                self.plateau.push(value, 0)
            self.plateau.cuts = int(state_dict.get("lr_reductions", self.plateau.cuts))

    # ------------------------------------------------------------------ summaries
    def best_entry(self) -> list[float] | None:
        """``[step, epoch, value]`` of the best raw validation (strictly better than every earlier one)."""
        best = None
        for entry in self.series:
            if improved(entry[2], None if best is None else best[2], self.mode):
                best = entry
        return best

    def has_stopped(self) -> bool:
        """Whether the rule has fired (for several tasks: any task's; :class:`AtomicCheckpoint` then keeps the
        checkpoints of that moment in ``checkpoints/at_stop/``)."""
        return self.stopped_early

    def still_improving(self) -> bool:
        """Whether the smoothed metric's last improvement lies within the last patience window."""
        return self.plateau.still_improving()

    def stopped_at_best(self) -> bool:
        """Whether the last validation is the best raw one."""
        best = self.best_entry()
        return bool(self.series) and best is not None and best is self.series[-1]


def find_callback(trainer: L.Trainer, cls: type) -> Any:
    return next((cb for cb in trainer.callbacks if isinstance(cb, cls)), None)


def stopped_by(trainer: L.Trainer, callback: Convergence | None = None) -> str | None:
    """What ended ``trainer``'s fit: one of :data:`STOPPED_BY`, or None (e.g. an interruption)."""
    from lightning.pytorch.callbacks import Timer

    callback = callback or find_callback(trainer, Convergence)
    if callback is not None and callback.stopped_early:
        return "early_stopping"
    own_cap = getattr(getattr(trainer, "lightning_module", None), "stopped_by_cap", None)
    if own_cap:
        return str(own_cap)
    timer = find_callback(trainer, Timer)
    if timer is not None and timer._duration is not None:
        remaining = timer.time_remaining("train")
        if remaining is not None and remaining <= 0:
            return "max_time"
    max_steps = trainer.max_steps
    if max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps:
        return "max_steps"
    if trainer.max_epochs is not None and trainer.max_epochs >= 0 and trainer.current_epoch >= trainer.max_epochs:
        return "max_epochs"
    return None


def convergence_record(trainer: L.Trainer, callback: Convergence | None = None,
                       checkpoint: Any = None) -> dict[str, Any]:
    """The convergence fields of ``metrics.json`` for a finished fit (see the module docstring).

    ``callback``: the run's :class:`Convergence` (found in ``trainer.callbacks`` when None); ``checkpoint``: the
    :class:`~mrlearn.engine.checkpoint.AtomicCheckpoint` whose ``best_step`` names ``best.ckpt`` (optional).
    """
    callback = callback or find_callback(trainer, Convergence)
    by = stopped_by(trainer, callback)
    record: dict[str, Any] = {"steps": int(trainer.global_step), "epochs": int(trainer.current_epoch),
                              "stopped_by": by}
    if callback is None:
        record.update(monitor=None, validations=0, best_step=None, best_score=None, converged=False,
                      stopped_at_best=None)
        return record
    best = callback.best_entry()
    best_step = getattr(checkpoint, "best_step", None) if checkpoint is not None else None
    record.update(monitor=callback.monitor, mode=callback.mode, patience=callback.patience,
                  patience_samples=callback.patience_samples, smoothing=callback.plateau.smoothing,
                  smoothing_window=callback.plateau.window if callback.plateau.smoothing != "none" else None,
                  validations=len(callback.series), samples=callback.samples, lr_reductions=callback.lr_reductions,
                  best_step=int(best_step if best_step is not None else best[0]) if best else None,
                  best_score=best[2] if best else None, smoothed_best=callback.plateau.best,
                  stopped_at_best=callback.stopped_at_best())
    if by == "early_stopping":
        record["converged"] = True
    else:
        record["converged"] = bool(callback.series) and not callback.still_improving()
    return record
