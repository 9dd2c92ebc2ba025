"""The ``trainer.early_stopping`` section: the plateau rule a training run stops on (:mod:`mrlearn.engine.plateau`).

One unit of patience per config: ``patience`` (validations) or ``patience_samples`` (training samples, so the window
scales with the data and the batch size); both set is refused. Neither set: 5 validations (the earlier default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mrlearn.errors import input_error

WHERE = "trainer.early_stopping"
DEFAULT_PATIENCE = 5


@dataclass
class EarlyStoppingConfig:
    """Stop when the validation metric ``monitor`` (default: the method's best-checkpoint metric, e.g. ``val_ssim``)
    has not improved by more than ``min_delta`` for ``patience`` validations - or ``patience_samples`` training
    samples - in a row; ``mode`` max/min (default: min for losses and errors, else max). Improvement is decided on
    the series smoothed by ``smoothing`` (``none``, ``ema`` with span ``smoothing_window``, or the running
    ``median`` of ``smoothing_window`` validations); ``best.ckpt`` follows the same metric, raw. ``lr_patience``
    (optional, validations): multiply every learning rate by ``lr_factor`` after each ``lr_patience`` validations
    without improvement, at most ``max_lr_cuts`` times (default: ``(patience - 1) // lr_patience``, or 2 with
    ``patience_samples``); each cut restarts the patience window, so the run stops only after a full window at its
    final rate. ``relative``: ``min_delta`` is a fraction of the best value so far (for losses whose scale differs
    from run to run)."""

    monitor: str | None = None
    mode: Literal["max", "min"] | None = None
    patience: int | None = None
    patience_samples: int | None = None
    min_delta: float = 0.0
    smoothing: Literal["none", "ema", "median"] = "none"
    smoothing_window: int = 5
    lr_patience: int | None = None
    lr_factor: float = 0.5
    max_lr_cuts: int | None = None
    relative: bool = False


def check_early_stopping(es: EarlyStoppingConfig | None) -> None:
    """Validate ``es`` in place (one-line errors naming the key); fills the default ``patience``."""
    if es is None:
        return
    if es.patience is not None and es.patience_samples is not None:
        raise input_error(WHERE, f"patience ({es.patience} validations) and patience_samples ({es.patience_samples}) "
                          "are both set", "keep one: patience counts validations, patience_samples training samples")
    if es.patience is None and es.patience_samples is None:
        es.patience = DEFAULT_PATIENCE
    for key in ("patience", "patience_samples"):
        if getattr(es, key) is not None and getattr(es, key) < 1:
            raise input_error(WHERE, f"{key} must be at least 1, got {getattr(es, key)}", "fix the value")
    if not (math.isfinite(es.min_delta) and es.min_delta >= 0):
        raise input_error(f"{WHERE}.min_delta", f"{es.min_delta} is not a number >= 0", "e.g. 0.1 (dB) or 0.001 (SSIM)")
    if es.smoothing_window < 1:
        raise input_error(f"{WHERE}.smoothing_window", f"{es.smoothing_window} is not at least 1 validation",
                          "e.g. 5 (1: no smoothing)")
    below = es.patience is None or es.lr_patience is None or es.lr_patience < es.patience
    if es.lr_patience is not None and not (es.lr_patience >= 1 and below and 0 < es.lr_factor < 1):
        need = "1 <= lr_patience < patience" if es.patience is not None else "lr_patience >= 1"
        raise input_error(WHERE, f"lr_patience {es.lr_patience} / lr_factor {es.lr_factor}: need {need} and "
                          "0 < lr_factor < 1", "fix the values or drop lr_patience")
    if es.max_lr_cuts is not None and (es.max_lr_cuts < 0 or es.lr_patience is None):
        raise input_error(f"{WHERE}.max_lr_cuts", f"{es.max_lr_cuts}: needs lr_patience and a count >= 0",
                          "set lr_patience too, or drop max_lr_cuts")
