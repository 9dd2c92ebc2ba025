"""Progress lines: one format for every long loop (training steps, solver iterations, voxel fits, study runs).

A line is printed to stderr (so it lands in a log file when the output is piped, unlike a terminal progress bar)
at most every ``every_s`` seconds, never before ``every_s`` seconds have passed (short loops stay silent)::

    [4/5] U-Net__seed0: training: step 120/400 (30%), epoch 3/10, val_ssim 0.7123 (best 0.72), 1m02s elapsed, ETA 2m25s
    CG-SENSE: iteration 40/300 (13%), relative residual 3.1e-04, 31s elapsed, ETA <= 3m14s

``<label>: <name>: <count>, <fields>, <elapsed> elapsed, ETA <time left>``. The label names the study run
(``[k/n] run id``) and is set by :func:`progress_context`; the ETA is the remaining count at the rate observed in
this process (:func:`eta_seconds`), so it is the time to the cap: early stopping or a solver's tolerance can end
sooner (solver lines say ``ETA <=``).

The interval: ``every_s`` given to :class:`Ticker`, else the innermost :func:`progress_context`'s, else the
environment variable ``MRLEARN_PROGRESS_EVERY`` (seconds), else :data:`DEFAULT_EVERY_S`; 0 turns lines off.
Lightning-free: the engine, the classical solvers and the voxel fits share it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import Callable, Iterator, Sequence, TextIO

from mrlearn.errors import input_error

DEFAULT_EVERY_S = 30.0
ENV_VAR = "MRLEARN_PROGRESS_EVERY"

_context: list[tuple[str | None, float | None]] = []  # (label, every_s) of the open progress_context blocks


def check_every(value: object, where: str, allow_none: bool = False) -> float | None:
    """``value`` as a finite interval in seconds >= 0 (None kept with ``allow_none``), or a one-line error."""
    if value is None and allow_none:
        return None
    try:
        every = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        every = math.nan
    if isinstance(value, bool) or not (math.isfinite(every) and every >= 0):
        raise input_error(where, f"{value!r} is not a number of seconds >= 0",
                          "e.g. 30 (a progress line at most every 30 s) or 0 (no progress lines)")
    return every


def progress_every() -> float:
    """The interval in force (see the module docstring)."""
    for _, every in reversed(_context):
        if every is not None:
            return every
    raw = os.environ.get(ENV_VAR)
    if raw is not None and raw.strip():
        return float(check_every(raw.strip(), ENV_VAR))  # type: ignore[arg-type]
    return DEFAULT_EVERY_S


def progress_label() -> str:
    """The labels of the open :func:`progress_context` blocks joined by ``: `` (empty outside any)."""
    return ": ".join(label for label, _ in _context if label)


@contextlib.contextmanager
def progress_context(label: str | None = None, every_s: float | None = None) -> Iterator[None]:
    """Within the block, progress lines start with ``label`` and use ``every_s`` (None: the outer setting)."""
    _context.append((label, None if every_s is None else check_every(every_s, "progress interval")))
    try:
        yield
    finally:
        _context.pop()


def format_duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``1h02m``, ``2d03h`` (rounded down; ``?`` when not finite)."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def eta_seconds(done: float, total: float | None, elapsed: float, done_at_start: float = 0.0) -> float | None:
    """Seconds left to ``total`` at the observed rate ``(done - done_at_start) / elapsed``.

    None when it cannot be known: no (finite) total, no progress yet in this process, or no time elapsed.
    ``done_at_start`` is the count when timing began (a resumed run starts at its checkpoint's step).
    """
    if total is None or not math.isfinite(float(total)) or total <= 0:
        return None
    progressed = float(done) - float(done_at_start)
    if progressed <= 0 or elapsed <= 0:
        return None
    return max(0.0, float(total) - float(done)) * float(elapsed) / progressed


def count_text(unit: str, done: int, total: int | None) -> str:
    """``step 120/400 (30%)``, or ``step 120`` without a total."""
    if total is None or total <= 0 or not math.isfinite(float(total)):
        return f"{unit} {int(done)}".strip()
    return f"{unit} {int(done)}/{int(total)} ({100.0 * done / total:.0f}%)".strip()


class Ticker:
    """Rate-limited progress lines of one loop (see the module docstring).

    ``name``: what runs (``training``, ``CG-SENSE``); ``every_s``: interval (None: :func:`progress_every` at
    construction); ``stream``: default ``sys.stderr`` at print time; ``clock``: seconds, monotonic.
    """

    def __init__(self, name: str, every_s: float | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.every_s = progress_every() if every_s is None else check_every(every_s, "progress interval")
        self.label = progress_label()
        self.stream = stream
        self.clock = clock
        self.start = self.last = clock()
        self.lines = 0

    @property
    def enabled(self) -> bool:
        return self.every_s > 0

    def elapsed(self) -> float:
        return self.clock() - self.start

    def due(self) -> bool:
        """Whether a line may be printed now (lines on, ``every_s`` passed since the start or the last line)."""
        return self.enabled and self.clock() - self.last >= self.every_s

    def line(self, count: str, fields: Sequence[str] = (), eta: float | None = None, bound: bool = False) -> str:
        """The text of one line (nothing printed); ``bound``: the ETA is an upper bound (``ETA <=``)."""
        parts = [count, *[f for f in fields if f], f"{format_duration(self.elapsed())} elapsed"]
        if eta is not None:
            parts.append(f"ETA {'<= ' if bound else ''}{format_duration(eta)}")
        prefix = ": ".join(p for p in (self.label, self.name) if p)
        return f"{prefix}: " + ", ".join(parts)

    def emit(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)
        self.last = self.clock()
        self.lines += 1

    def update(self, unit: str, done: int, total: int | None = None, fields: Sequence[str] = (),
               done_at_start: int = 0, bound: bool = False, force: bool = False) -> str | None:
        """Print ``unit done/total, fields, elapsed, ETA`` if due (or ``force`` with lines on); returns the line."""
        if not (self.due() or (force and self.enabled)):
            return None
        eta = eta_seconds(done, total, self.elapsed(), done_at_start)
        text = self.line(count_text(unit, done, total), fields, eta, bound)
        self.emit(text)
        return text


__all__ = ["DEFAULT_EVERY_S", "ENV_VAR", "Ticker", "check_every", "count_text", "eta_seconds", "format_duration",
           "progress_context", "progress_every", "progress_label"]
