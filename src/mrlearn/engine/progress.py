"""Training progress: Lightning's tqdm bar on a terminal, clean lines when the output goes to a file.

A log redirected to a file must not fill with carriage-return redraws of a bar. :func:`progress_callbacks` returns
Lightning's :class:`~lightning.pytorch.callbacks.TQDMProgressBar` when stderr is a terminal, else
:class:`LineProgress`, which prints one line per epoch (train loss, validation metrics, time) and a step line at
most every ``every_s`` seconds. Only rank 0 prints.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _fmt(metrics: dict[str, Any], keys: tuple[str, ...]) -> str:
    parts = []
    for key in keys:
        if key in metrics:
            try:
                parts.append(f"{key} {float(metrics[key]):.4g}")
            except (TypeError, ValueError):
                pass
    return ", ".join(parts)


class LineProgress(L.Callback):
    """Plain progress lines (see the module docstring)."""

    KEYS = ("train_loss", "val_loss", "val_psnr", "val_ssim", "val_nmse")

    def __init__(self, every_s: float = 30.0, stream: TextIO | None = None):
        self.every_s = float(every_s)
        self.stream = stream
        self._epoch_start = self._last_line = time.monotonic()

    def _print(self, trainer: L.Trainer, text: str) -> None:
        if trainer.is_global_zero:
            print(text, file=self.stream or sys.stderr, flush=True)
            self._last_line = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if time.monotonic() - self._last_line >= self.every_s:
            total = trainer.num_training_batches
            of = f"/{int(total)}" if total != float("inf") else ""
            detail = _fmt(trainer.callback_metrics, ("train_loss",))
            self._print(trainer, f"epoch {trainer.current_epoch} batch {batch_idx + 1}{of} step {trainer.global_step}"
                                 + (f": {detail}" if detail else ""))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = dict(trainer.callback_metrics)
        history = getattr(pl_module, "history", {})
        entry = history.get(int(trainer.current_epoch), {}) if isinstance(history, dict) else {}
        metrics.update({k: v for k, v in entry.items() if k == "train_loss"})
        detail = _fmt(metrics, self.KEYS)
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self._print(trainer, f"epoch {trainer.current_epoch + 1}{epochs} done, step {trainer.global_step}"
                             + (f": {detail}" if detail else "") + f" ({time.monotonic() - self._epoch_start:.1f} s)")


def progress_callbacks(enabled: bool, stream: TextIO | None = None) -> tuple[list[L.Callback], bool]:
    """``(callbacks, enable_progress_bar)`` for the Trainer: the tqdm bar on a terminal, lines otherwise."""
    if not enabled:
        return [], False
    if is_terminal(stream):
        from lightning.pytorch.callbacks import TQDMProgressBar

        return [TQDMProgressBar()], True
    return [LineProgress(stream=stream)], False
