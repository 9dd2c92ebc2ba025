"""The one spread statistic every report and table uses: the sample standard deviation (``ddof = 1``).

``mean ± std`` in mrlearn always means the mean and the sample standard deviation ``sqrt(sum (x - mean)^2 / (n - 1))``
over a stated unit (test volumes, seeds, noise repeats); with fewer than two values the std is undefined (NaN, shown
as ``-``). Each report says so in its text with :func:`std_note`.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

#: the ddof of every std mrlearn reports
DDOF = 1


def sample_std(values: Iterable[float]) -> float:
    """Sample standard deviation (``ddof = 1``) of the finite-or-infinite, non-NaN ``values``; NaN for fewer than 2."""
    v = np.asarray([float(x) for x in values if x == x], dtype=np.float64)
    if v.size < 2:
        return math.nan
    return float(v.std(ddof=DDOF))


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """``(mean, sample std)`` of the non-NaN ``values`` (NaN mean when there are none; NaN std for fewer than 2)."""
    v = [float(x) for x in values if x == x]
    if not v:
        return math.nan, math.nan
    return float(np.mean(v)), sample_std(v)


def std_note(unit: str) -> str:
    """The sentence a report states: ``± is the sample standard deviation (ddof = 1) over <unit>.``"""
    return f"± is the sample standard deviation (ddof = 1) over {unit}."


def pm(mean: float, std: float, digits: int) -> str:
    """``mean ± std`` with ``digits`` decimals (``-`` for an undefined std)."""
    sd = "-" if not math.isfinite(std) else f"{std:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd}"


__all__ = ["DDOF", "mean_std", "pm", "sample_std", "std_note"]
