"""Statistics of a study: the volume and the seed are the units of replication, never the slice.

A comparison's data are first reduced to one number per (seed, volume) cell - the mean over that volume's slices
of the per-slice difference ``metric(arm) - metric(baseline)`` (same grid point, seed, file and slice) - giving a
matrix ``D[seed, volume]`` (NaN where a cell is missing). Its interval comes from a two-way bootstrap: each
replicate draws the seeds with replacement and, independently, the volumes with replacement, and takes the mean of
the selected cells; the 95 % interval is the 2.5 and 97.5 percentiles of ``n_boot`` replicates (seeded, so the
report is reproducible). Slices inside a volume are never resampled: adding slices to a volume does not narrow
the interval (no pseudo-replication). With one seed the interval covers volume-to-volume variation only; with one
seed and one volume there is none (NaN).

A verdict ("better"/"worse") is given only when both arms converged and the interval rests on at least
:data:`MIN_VOLUMES` volumes and :data:`MIN_SEEDS` seeds and excludes zero; otherwise :func:`verdict` says why not.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mrlearn.evaluation.spread import mean_std  # noqa: F401 - the one std (sample, ddof = 1), re-exported

MIN_VOLUMES = 3
MIN_SEEDS = 3


def paired_ci(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean of paired differences and its two-sided Student-t confidence interval: (mean, low, high, n)."""
    from scipy import stats

    d = np.asarray([x for x in diffs if x == x], dtype=np.float64)
    n = int(d.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def cell_matrix(cells: dict[tuple[int, str], list[float]]) -> tuple[np.ndarray, list[int], list[str]]:
    """``D[seed, volume]`` = mean of each cell's values (NaN for a missing cell), with the seed and volume labels."""
    seeds = sorted({s for s, _ in cells})
    volumes = sorted({v for _, v in cells})
    D = np.full((len(seeds), len(volumes)), np.nan)
    for (s, v), values in cells.items():
        vals = [x for x in values if x == x]
        if vals:
            D[seeds.index(s), volumes.index(v)] = float(np.mean(vals))
    return D, seeds, volumes


def bootstrap_ci(D: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of the cells of ``D[seed, volume]`` and its two-way (seeds x volumes) bootstrap percentile interval."""
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or not np.isfinite(D).any():
        return math.nan, math.nan, math.nan
    keep_s = np.isfinite(D).any(axis=1)
    keep_v = np.isfinite(D).any(axis=0)
    D = D[keep_s][:, keep_v]
    mean = float(np.nanmean(D))
    S, V = D.shape
    if S * V < 2:
        return mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    si = rng.integers(0, S, size=(n_boot, S))
    vi = rng.integers(0, V, size=(n_boot, V))
    picked = D[si[:, :, None], vi[:, None, :]]  # [n_boot, S, V]
    finite = np.isfinite(picked)
    counts = finite.sum(axis=(1, 2))
    sums = np.where(finite, picked, 0.0).sum(axis=(1, 2))
    reps = sums[counts > 0] / counts[counts > 0]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail])
    return mean, float(low), float(high)


def counts(D: np.ndarray) -> tuple[int, int]:
    """(volumes, seeds) with at least one value in ``D[seed, volume]``."""
    finite = np.isfinite(np.asarray(D, dtype=np.float64))
    return int(finite.any(axis=0).sum()), int(finite.any(axis=1).sum())


def verdict(low: float, high: float, volumes: int, seeds: int, not_converged: Sequence[str] = (),
            unknown: Sequence[str] = ()) -> str:
    """``better`` / ``worse`` / ``no clear difference`` when the evidence allows one, else ``no verdict: <why>``.

    ``not_converged``: arms with a run stopped by a cap while still improving; ``unknown``: arms whose runs recorded
    no convergence status.
    """
    why = []
    if not_converged:
        why.append(f"not converged: {', '.join(not_converged)}")
    if unknown:
        why.append(f"convergence not recorded: {', '.join(unknown)}")
    if volumes < MIN_VOLUMES:
        why.append(f"{volumes} volume(s) < {MIN_VOLUMES}")
    if seeds < MIN_SEEDS:
        why.append(f"{seeds} seed(s) < {MIN_SEEDS}")
    if not (low == low and high == high):
        why.append("no interval")
    if why:
        return "no verdict: " + "; ".join(why)
    return "better" if low > 0 else "worse" if high < 0 else "no clear difference"
