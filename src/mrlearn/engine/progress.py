"""Training progress: one periodic line on stderr, or Lightning's tqdm bar on a terminal.

:class:`LineProgress` prints, at most every ``trainer.progress_every`` seconds (0: never; None: the default of
:func:`mrlearn.progress.progress_every`, 30 s), one line in the shared format of :mod:`mrlearn.progress`::

    [4/5] U-Net__seed0: training: step 120/400 (30%), epoch 3/10, val_ssim 0.7123 (best 0.72 at step 100),
    1m02s elapsed, ETA 2m25s

``step s/S``: optimiser steps done and the cap (``max_steps``, else the steps ``max_epochs`` allows); ``epoch e/E``:
the epoch running (1-based); the monitored validation metric's latest value and its best so far; the ETA is the
steps left at this process's step rate (validation time included), capped by what ``max_time`` leaves, so it is
the time to the cap (early stopping can end sooner). During a long validation the line says ``validation batch
b/B`` instead, and an evaluation after the fit ``evaluation batch b/B``. Short runs print nothing (the first line
comes ``progress_every`` seconds after the start); a run that printed lines ends with a ``finished`` line. Only
rank 0 prints.

:func:`progress_callbacks` returns the tqdm bar instead when ``trainer.progress_bar`` is set, stderr is a terminal
and no study label is set (:func:`mrlearn.progress.progress_context`); a study or a redirected log always gets lines.
"""

from __future__ import annotations

import math
import sys
from typing import Any, TextIO

import lightning as L

from mrlearn.progress import Ticker, count_text, eta_seconds, progress_every, progress_label


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def step_cap(trainer: L.Trainer) -> int | None:
    """The optimiser steps this fit may reach: ``max_steps`` or the steps ``max_epochs`` allows (None: no cap)."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        total = float(trainer.estimated_stepping_batches)
    except Exception:  # noqa: BLE001 - Lightning cannot always estimate (e.g. an iterable loader): no total then
        return None
    return int(total) if math.isfinite(total) and total > 0 else None


def time_left(trainer: L.Trainer) -> float | None:
    """Seconds ``max_time`` still allows (Lightning's Timer callback), None without ``max_time``."""
    from lightning.pytorch.callbacks import Timer

    for cb in trainer.callbacks:
        if isinstance(cb, Timer):
            left = cb.time_remaining("train")
            return None if left is None else max(0.0, float(left))
    return None


class LineProgress(L.Callback):
    """Periodic progress lines of a fit (see the module docstring).

    ``monitor``/``mode``: the validation metric shown and which direction is better; ``every_s``: the interval
    (None: the default).
    """

    def __init__(self, monitor: str = "val_ssim", mode: str = "max", every_s: float | None = None,
                 stream: TextIO | None = None):
        self.monitor, self.mode = monitor, mode
        self.every_s, self.stream = every_s, stream
        self.ticker: Ticker | None = None
        self.step0 = 0
        self.total: int | None = None
        self.latest: float | None = None
        self.best: tuple[float, int] | None = None  # (value, step)
        self.finished = False
        self.eval_start = 0.0

    # -- fields -------------------------------------------------------------------------------------------------
    def fields(self, trainer: L.Trainer) -> list[str]:
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        epoch = trainer.current_epoch + 1 if epochs is None else min(trainer.current_epoch + 1, epochs)
        out = [f"epoch {epoch}" + (f"/{epochs}" if epochs else "")]
        if self.latest is not None:
            best = f" (best {self.best[0]:.4g} at step {self.best[1]})" if self.best is not None else ""
            out.append(f"{self.monitor} {self.latest:.4g}{best}")
        return out

    def eta(self, trainer: L.Trainer) -> float | None:
        assert self.ticker is not None
        eta = eta_seconds(trainer.global_step, self.total, self.ticker.elapsed(), self.step0)
        cap = time_left(trainer)
        if cap is not None:
            eta = cap if eta is None else min(eta, cap)
        return eta

    def _line(self, trainer: L.Trainer, count: str | None = None, force: bool = False) -> None:
        t = self.ticker
        if t is None or not trainer.is_global_zero or not (t.due() or (force and t.enabled and t.lines)):
            return
        steps = count_text("step", trainer.global_step, self.total)
        fields = self.fields(trainer)
        if count is not None:  # inside a validation: say so first
            fields = [steps, *fields]
            steps = count
        t.emit(t.line(steps, fields, self.eta(trainer) if count != "finished" else None))

    # -- hooks --------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ticker, self.finished = Ticker("training", self.every_s, self.stream), False
        self.step0 = int(trainer.global_step)
        self.total = step_cap(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._line(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        total = _batch_total(trainer.num_val_batches, dataloader_idx)
        if trainer.state.fn == "fit" and not self.finished:
            self._line(trainer, count=count_text("validation batch", batch_idx + 1, total))
        else:
            self._eval_line(trainer, batch_idx, total)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_line(trainer, batch_idx, _batch_total(trainer.num_test_batches, dataloader_idx))

    def _eval_line(self, trainer: L.Trainer, batch_idx: int, total: int | None) -> None:
        """A line of an evaluation outside the fit (the final scoring): batches done, elapsed, ETA."""
        if self.ticker is None:
            self.ticker = Ticker("training", self.every_s, self.stream)
        if batch_idx == 0:
            self.eval_start = self.ticker.elapsed()
        t = self.ticker
        if trainer.is_global_zero and t.due():
            eta = eta_seconds(batch_idx + 1, total, t.elapsed() - self.eval_start)
            t.emit(t.line(count_text("evaluation batch", batch_idx + 1, total), (), eta))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = _number(trainer.callback_metrics.get(self.monitor))
        if value is None:
            return
        self.latest = value
        better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        if better:
            self.best = (value, int(trainer.global_step))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._line(trainer, count="finished", force=True)
        self.finished = True


def _batch_total(totals: Any, index: int) -> int | None:
    """Batches of loader ``index`` from Lightning's ``num_*_batches`` list (None: unknown or infinite)."""
    try:
        total = float(totals[index])
    except (TypeError, IndexError, ValueError):
        return None
    return int(total) if math.isfinite(total) else None


def progress_callbacks(enabled_bar: bool, every_s: float | None = None, monitor: tuple[str, str] = ("val_ssim", "max"),
                       stream: TextIO | None = None) -> tuple[list[L.Callback], bool]:
    """``(callbacks, enable_progress_bar)``: the tqdm bar (``enabled_bar``, a terminal, no study label) or
    :class:`LineProgress` (none when ``every_s`` is 0)."""
    if enabled_bar and is_terminal(stream) and not progress_label():
        from lightning.pytorch.callbacks import TQDMProgressBar

        return [TQDMProgressBar()], True
    line = LineProgress(monitor[0], monitor[1], every_s, stream)
    return ([line] if line_enabled(every_s) else []), False


def line_enabled(every_s: float | None) -> bool:
    """Whether lines are on for ``every_s`` (None: the default interval)."""
    return (progress_every() if every_s is None else float(every_s)) > 0
