"""Convergence, once for every method family: the validation series, early stopping, and what stopped a run.

:class:`Convergence` (a Lightning callback added by :func:`mrlearn.engine.trainer.make_trainer`) records every
validation of the monitored metric as ``(step, epoch, value)``; with ``patience`` set it stops the fit when the
metric has not improved by more than ``min_delta`` (a fraction of the best value with ``relative``) for ``patience``
validations in a row (early stopping). With
``lr_patience`` set it also multiplies every learning rate by ``lr_factor`` after each ``lr_patience`` validations
without improvement (reduce-on-plateau: with ``patience = 3 * lr_patience`` the rate is cut twice before the run
stops), so a slowly creeping metric reaches a real plateau instead of a cap. Its state travels in checkpoints
(the learning rates in the optimizer's), so a resumed run continues the same series (and a run that already
stopped early stays stopped).

:func:`convergence_record` gives what every run writes into its ``metrics.json``:

* ``steps`` (optimizer steps done), ``epochs``, ``validations`` (how many);
* ``best_step`` / ``best_score`` of the monitored metric (the step of ``best.ckpt``);
* ``lr_reductions``: the reduce-on-plateau cuts made (0 without ``lr_patience``);
* ``stopped_by``: ``early_stopping``, ``max_steps``, ``max_epochs``, ``max_time``, or a cap the method itself
  applies and names in its ``stopped_by_cap`` attribute (e.g. ``max_samples``) (``None`` when none applies);
* ``converged``: True after early stopping; after a cap, False when the metric was still improving - its last
  improvement lies within the last ``patience`` validations (the last validation when no patience is set) - or
  when no validation ran.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L

STOPPED_BY = ("early_stopping", "max_steps", "max_epochs", "max_time", "max_samples")


def default_mode(monitor: str) -> str:
    """``min`` for losses and errors (names containing loss, nmse, mse, mae, error), else ``max``."""
    low = monitor.lower()
    return "min" if any(k in low for k in ("loss", "nmse", "mse", "mae", "error")) else "max"


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0, relative: bool = False) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in direction ``mode`` (max/min);
    ``relative``: by more than ``min_delta * |best|`` (for losses whose scale differs from run to run)."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    delta = min_delta * abs(best) if relative else min_delta
    return value > best + delta if mode == "max" else value < best - delta


class Convergence(L.Callback):
    """Validation series of ``monitor`` and early stopping (``patience`` None: record only, never stop)."""

    def __init__(self, monitor: str, mode: str = "max", patience: int | None = None, min_delta: float = 0.0,
                 lr_patience: int | None = None, lr_factor: float = 0.5, relative: bool = False):
        if mode not in ("max", "min"):
            raise ValueError("mode must be 'max' or 'min'")
        if lr_patience is not None and (int(lr_patience) < 1 or not 0.0 < float(lr_factor) < 1.0):
            raise ValueError("lr_patience must be at least 1 and lr_factor in (0, 1)")
        self.monitor, self.mode = monitor, mode
        self.patience = None if patience is None else int(patience)
        self.min_delta, self.relative = float(min_delta), bool(relative)
        self.lr_patience = None if lr_patience is None else int(lr_patience)
        self.lr_factor = float(lr_factor)
        self.series: list[list[float]] = []  # [step, epoch, value]
        self.best: float | None = None
        self.wait = 0
        self.lr_reductions = 0
        self.stopped_early = False

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
        if improved(value, self.best, self.mode, self.min_delta, self.relative):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        if self.patience is not None and self.wait >= self.patience:
            self.stopped_early = True
            trainer.should_stop = True
        elif self.lr_patience is not None and self.wait > 0 and self.wait % self.lr_patience == 0:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = group["lr"] * self.lr_factor
            self.lr_reductions += 1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped_early:  # resuming a run that already stopped early: stay stopped
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"series": [list(s) for s in self.series], "best": self.best, "wait": self.wait,
                "lr_reductions": self.lr_reductions, "stopped_early": self.stopped_early}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.series = [list(s) for s in state_dict.get("series", [])]
        self.best = state_dict.get("best")
        self.wait = int(state_dict.get("wait", 0))
        self.lr_reductions = int(state_dict.get("lr_reductions", 0))
        self.stopped_early = bool(state_dict.get("stopped_early", False))

    # ------------------------------------------------------------------ summaries
    def best_entry(self) -> list[float] | None:
        """``[step, epoch, value]`` of the best validation (strictly better than every earlier one)."""
        best = None
        for entry in self.series:
            if improved(entry[2], None if best is None else best[2], self.mode):
                best = entry
        return best

    def still_improving(self) -> bool:
        """Whether the last improvement (by more than ``min_delta``) lies within the last patience window."""
        if not self.series:
            return True
        window = self.patience or 1
        last_improvement, best = -1, None
        for i, (_, _, value) in enumerate(self.series):
            if improved(value, best, self.mode, self.min_delta, self.relative):
                best, last_improvement = value, i
        return last_improvement >= len(self.series) - window


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
        record.update(monitor=None, validations=0, best_step=None, best_score=None, converged=False)
        return record
    best = callback.best_entry()
    best_step = getattr(checkpoint, "best_step", None) if checkpoint is not None else None
    record.update(monitor=callback.monitor, mode=callback.mode, patience=callback.patience,
                  validations=len(callback.series), lr_reductions=callback.lr_reductions,
                  best_step=int(best_step if best_step is not None else best[0]) if best else None,
                  best_score=best[2] if best else None)
    if by == "early_stopping":
        record["converged"] = True
    else:
        record["converged"] = bool(callback.series) and not callback.still_improving()
    return record
