"""The plateau rule of early stopping, without Lightning: a smoothed validation series, a patience window counted
in validations or in training samples, and reduce-on-plateau cuts that restart that window.

Smoothing (``smoothing``; ``window`` = k validations) decides what counts as an improvement:

* ``none``: ``s_t = x_t`` (the raw metric);
* ``ema``: ``s_0 = x_0``, ``s_t = a x_t + (1 - a) s_{t-1}`` with ``a = 2 / (k + 1)`` (the span convention); a
  zigzag ``x_t = c (-1)^t`` keeps an amplitude ``c a / (2 - a)`` (``c / 5`` at k = 5), so a curve that zigzags by
  0.3-0.5 dB around a slow rise keeps improving on ``s`` while its raw maximum is an early spike;
* ``median``: ``s_t`` = median of the last k finite values (fewer at the start): removes isolated outliers (an odd
  window keeps a strict alternation; use ``ema`` for that).

Non-finite values never improve anything and leave ``s`` unchanged. An improvement is ``s_t`` beating the best
smoothed value by more than ``min_delta`` (``relative``: ``min_delta * |best|``). With smoothing, decisions start
once k finite values are in (before that the smoothed value rests on a few noisy points: a first validation on a
zig would stay "best" for many validations of a slow rise); the window starts there. The best checkpoint is not
chosen here: it follows the raw metric.

Window (:class:`Plateau`): the *anchor* is the last improvement or the last learning-rate cut. The run stops when
``patience`` validations (or ``patience_samples`` training samples) have passed since the anchor. With
``lr_patience``, every ``lr_patience`` validations since the anchor the rate is cut (anchor moved to the cut), at
most ``max_lr_cuts`` times, and the run cannot stop before its cuts are used up: so it always watches a full
patience window at its final rate, and the plateau it stops on is never made by the decay itself.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

SMOOTHING = ("none", "ema", "median")


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0, relative: bool = False) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in direction ``mode`` (max/min);
    ``relative``: by more than ``min_delta * |best|`` (for losses whose scale differs from run to run)."""
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    delta = min_delta * abs(best) if relative else min_delta
    return value > best + delta if mode == "max" else value < best - delta


def smooth(values: list[float], smoothing: str = "none", window: int = 5) -> list[float | None]:
    """The smoothed series of ``values`` (see the module docstring); None until the first finite value."""
    if smoothing not in SMOOTHING:
        raise ValueError(f"smoothing must be one of {SMOOTHING}")
    out: list[float | None] = []
    alpha = 2.0 / (int(window) + 1)
    recent: list[float] = []
    s: float | None = None
    for x in values:
        if x is not None and math.isfinite(x):
            if smoothing == "ema":
                s = x if s is None else alpha * x + (1 - alpha) * s
            elif smoothing == "median":
                recent = (recent + [float(x)])[-int(window):]
                s = float(statistics.median(recent))
            else:
                s = float(x)
        out.append(s)
    return out


class Plateau:
    """State of the plateau rule over a growing validation series (see the module docstring).

    ``push(value, samples)`` takes one validation (``samples``: training samples seen so far) and returns
    ``"stop"``, ``"cut"`` (multiply the learning rates now) or ``None``. ``patience``/``patience_samples``: at most
    one is set (neither: record only, never stop).
    """

    def __init__(self, mode: str = "max", patience: int | None = None, patience_samples: int | None = None,
                 min_delta: float = 0.0, relative: bool = False, smoothing: str = "none", window: int = 5,
                 lr_patience: int | None = None, max_lr_cuts: int | None = None):
        if mode not in ("max", "min"):
            raise ValueError("mode must be 'max' or 'min'")
        if patience is not None and patience_samples is not None:
            raise ValueError("give patience (validations) or patience_samples, not both")
        if smoothing not in SMOOTHING or int(window) < 1:
            raise ValueError(f"smoothing must be one of {SMOOTHING} and window at least 1")
        self.mode, self.min_delta, self.relative = mode, float(min_delta), bool(relative)
        self.patience = None if patience is None else int(patience)
        self.patience_samples = None if patience_samples is None else int(patience_samples)
        self.smoothing, self.window = smoothing, int(window)
        self.lr_patience = None if lr_patience is None else int(lr_patience)
        if max_lr_cuts is None and self.lr_patience is not None:  # as many cuts as the old rule made in one window
            max_lr_cuts = max(1, (self.patience - 1) // self.lr_patience) if self.patience else 2
        self.max_lr_cuts = 0 if self.lr_patience is None else int(max_lr_cuts or 0)
        self.raw: list[float] = []
        self.samples: list[int] = []
        self.smoothed: list[float | None] = []
        self.best: float | None = None  # best smoothed value
        self.best_index = -1  # validation of the last improvement
        self.anchor = (-1, 0)  # (validation index, samples) of the last improvement or cut
        self.cuts = 0

    def _smoothed_next(self, value: float) -> float | None:
        prev = next((s for s in reversed(self.smoothed) if s is not None), None)
        if not math.isfinite(value):
            return prev
        if self.smoothing == "median":
            return float(statistics.median([x for x in self.raw if math.isfinite(x)][-self.window:]))
        if self.smoothing == "ema" and prev is not None:
            alpha = 2.0 / (self.window + 1)
            return alpha * value + (1 - alpha) * prev
        return float(value)

    def push(self, value: float, samples: int = 0) -> str | None:
        self.raw.append(float(value))
        self.samples.append(int(samples))
        s = self._smoothed_next(float(value))
        self.smoothed.append(s)
        i = len(self.raw) - 1
        if self.smoothing != "none" and sum(math.isfinite(x) for x in self.raw) < self.window:
            self.anchor = (i, int(samples))  # warming up: the window starts once the smoother has k values
            return None
        if improved(s, self.best, self.mode, self.min_delta, self.relative):
            self.best, self.best_index, self.anchor = s, i, (i, int(samples))
            return None
        since = i - self.anchor[0]
        if self.cuts < self.max_lr_cuts:
            if since >= self.lr_patience:
                self.cuts += 1
                self.anchor = (i, int(samples))
                return "cut"
            return None
        return "stop" if self._window_passed(i, int(samples), self.anchor) else None

    def _window_passed(self, i: int, samples: int, anchor: tuple[int, int]) -> bool:
        if self.patience_samples is not None:
            return samples - anchor[1] >= self.patience_samples
        if self.patience is not None:
            return i - anchor[0] >= self.patience
        return False

    def window_used(self) -> bool:
        """Whether the rule has ended under its current settings: every cut made and a full window since the
        anchor (a longer window, e.g. a stopping check's, reopens a rule that ended under a shorter one)."""
        if not self.raw or self.cuts < self.max_lr_cuts:
            return False
        return self._window_passed(len(self.raw) - 1, self.samples[-1], self.anchor)

    def still_improving(self) -> bool:
        """Whether the last improvement of the smoothed series lies within the last window (``patience``
        validations or ``patience_samples`` samples; the last validation when neither is set)."""
        if not self.raw:
            return True
        i, n = len(self.raw) - 1, self.samples[-1]
        if self.best_index < 0:
            return False
        if self.patience is None and self.patience_samples is None:
            return self.best_index == i
        return not self._window_passed(i, n, (self.best_index, self.samples[self.best_index]))

    def state_dict(self) -> dict[str, Any]:
        return {"raw": list(self.raw), "samples": list(self.samples), "smoothed": list(self.smoothed),
                "best": self.best, "best_index": self.best_index, "anchor": list(self.anchor), "cuts": self.cuts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.raw = [float(x) for x in state.get("raw", [])]
        self.samples = [int(x) for x in state.get("samples", [0] * len(self.raw))]
        self.smoothed = list(state.get("smoothed", smooth(self.raw, self.smoothing, self.window)))
        self.best = state.get("best")
        self.best_index = int(state.get("best_index", -1))
        self.anchor = tuple(state.get("anchor", (-1, 0)))  # type: ignore[assignment]
        self.cuts = int(state.get("cuts", 0))
