"""Statistics of a study: subjects and seeds are the (crossed) units of replication, never the slice.

A comparison's data are first reduced to one number per (seed, subject) cell - the mean over that subject's slices
of the metric (``study.cells``) - giving a matrix ``D[seed, subject]`` (NaN where a cell is missing); a paired
difference is the cell of the arm minus the cell of the baseline (same grid point, seed, group and subject).

Interval (:func:`crossed_interval`): the crossed random-effects model ``D[s, v] = mu + a_s + b_v + e_sv`` with
``a_s ~ N(0, sa2)`` (seed), ``b_v ~ N(0, sb2)`` (subject) and ``e_sv ~ N(0, se2)`` (interaction / residual). On a
complete ``S x V`` matrix the two-way ANOVA mean squares are

    MS_A = V sum_s (r_s - m)^2 / (S - 1),  MS_B = S sum_v (c_v - m)^2 / (V - 1),
    MS_E = sum_sv (D_sv - r_s - c_v + m)^2 / ((S - 1)(V - 1)),

with ``E[MS_A] = se2 + V sa2``, ``E[MS_B] = se2 + S sb2``, ``E[MS_E] = se2``. The variance components are their
method-of-moments solutions truncated at 0, and

    Var(m) = sa2 / S + sb2 / V + se2 / (S V) = (max(MS_A, MS_E) + max(MS_B, MS_E) - MS_E) / (S V),

a linear combination ``sum c_i MS_i`` whose degrees of freedom are Satterthwaite's
``(sum c_i MS_i)^2 / sum (c_i MS_i)^2 / df_i``. The interval is ``m +- t_{df, 1 - alpha/2} sqrt(Var(m))`` and the
two-sided p-value of ``mu = 0`` is that of ``t = m / sqrt(Var(m))`` with the same df. With one seed (or one subject)
the other factor alone gives the interval (``Var = var(c_v) / V``, ``V - 1`` df): it then covers subject (or seed)
variation only. Coverage of the 95 % interval, checked by simulation (tests/test_study_stats.py, docs/studies.md):
>= 0.94 at 3 x 8, 3 x 10 and 5 x 12 (seeds x subjects) whichever variance dominates.

Missing cells: seeds or subjects with missing cells are dropped until the matrix is complete (:func:`complete`);
the counts reported are those of the complete matrix the interval rests on.

Verdicts (:func:`verdict`): only with both arms converged, neither marked stopping-sensitive, at least
:data:`MIN_SUBJECTS` subjects and :data:`MIN_SEEDS` seeds, and an interval. The comparisons of one study that pass
these rules form one family; their p-values are adjusted by Holm's step-down method (:func:`holm`) and a comparison
is ``better`` / ``worse`` when its adjusted p is at most :data:`ALPHA` (sign of the mean), else ``no clear
difference``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mrlearn.evaluation.spread import mean_std  # noqa: F401 - the one std (sample, ddof = 1), re-exported

MIN_SUBJECTS = 8
MIN_SEEDS = 3
#: family-wise error rate of a study's verdicts (Holm)
ALPHA = 0.05


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


def cell_matrix(cells: dict[tuple[int, str], float | list[float]]) -> tuple[np.ndarray, list[int], list[str]]:
    """``D[seed, subject]`` from ``{(seed, subject): value or list of values}`` (a list: its mean; NaN for a missing
    cell), with the sorted seed and subject labels."""
    seeds = sorted({s for s, _ in cells})
    subjects = sorted({v for _, v in cells})
    D = np.full((len(seeds), len(subjects)), np.nan)
    for (s, v), values in cells.items():
        vals = [x for x in (values if isinstance(values, (list, tuple)) else [values]) if x == x]
        if vals:
            D[seeds.index(s), subjects.index(v)] = float(np.mean(vals))
    return D, seeds, subjects


def complete(D: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The complete sub-matrix of ``D[seed, subject]`` and the kept seed and subject indices.

    Empty seeds and subjects go first; then, while a cell is missing, the seed or subject with the largest share of
    missing cells is dropped (on a tie a subject rather than a seed: seeds are the scarcer unit).
    """
    D = np.asarray(D, dtype=np.float64)
    rows = np.flatnonzero(np.isfinite(D).any(axis=1))
    cols = np.flatnonzero(np.isfinite(D).any(axis=0))
    while rows.size and cols.size:
        sub = np.isnan(D[np.ix_(rows, cols)])
        if not sub.any():
            break
        row_share, col_share = sub.mean(axis=1), sub.mean(axis=0)
        if row_share.max() > col_share.max():
            rows = np.delete(rows, int(row_share.argmax()))
        else:
            cols = np.delete(cols, int(col_share.argmax()))
    return D[np.ix_(rows, cols)], rows, cols


def counts(D: np.ndarray) -> tuple[int, int]:
    """(subjects, seeds) of the complete matrix an interval on ``D[seed, subject]`` rests on (:func:`complete`)."""
    C = complete(D)[0]
    return (int(C.shape[1]), int(C.shape[0])) if C.size else (0, 0)


@dataclass(frozen=True)
class Interval:
    """Mean of ``D[seed, subject]``, its interval ``[low, high]``, standard error, Satterthwaite df and counts."""

    mean: float
    low: float
    high: float
    se: float
    df: float
    subjects: int
    seeds: int

    def p_value(self) -> float:
        """Two-sided p of ``mu = 0`` from ``t = mean / se`` with ``df`` (0 when se = 0 and mean != 0; NaN without)."""
        from scipy import stats

        if not (self.se == self.se and self.mean == self.mean):
            return math.nan
        if self.se == 0:
            return 1.0 if self.mean == 0 else 0.0
        return float(2 * stats.t.sf(abs(self.mean) / self.se, self.df))


def mean_squares(C: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(MS_A seeds, MS_B subjects, MS_E interaction) of complete matrices ``C[..., seed, subject]`` (S, V >= 2)."""
    C = np.asarray(C, dtype=np.float64)
    S, V = C.shape[-2:]
    m = C.mean(axis=(-2, -1), keepdims=True)
    r, c = C.mean(axis=-1, keepdims=True), C.mean(axis=-2, keepdims=True)
    ms_a = V * ((r - m) ** 2).sum(axis=(-2, -1)) / (S - 1)
    ms_b = S * ((c - m) ** 2).sum(axis=(-2, -1)) / (V - 1)
    ms_e = ((C - r - c + m) ** 2).sum(axis=(-2, -1)) / ((S - 1) * (V - 1))
    return ms_a, ms_b, ms_e


def variance_of_mean(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Var(mean), Satterthwaite df)`` of complete matrices ``C[..., seed, subject]`` (module docstring); with one
    seed or one subject, the sample variance of the other factor's values over their number, and its df."""
    C = np.asarray(C, dtype=np.float64)
    S, V = C.shape[-2:]
    if S == 1 or V == 1:  # one factor only: the t interval of its values
        x = C.reshape(*C.shape[:-2], S * V)
        return x.var(axis=-1, ddof=1) / x.shape[-1], np.full(C.shape[:-2], float(S * V - 1))
    ms_a, ms_b, ms_e = mean_squares(C)
    a, b = (ms_a > ms_e).astype(np.float64), (ms_b > ms_e).astype(np.float64)
    terms = np.stack([a * ms_a, b * ms_b, (1.0 - a - b) * ms_e])
    dfs = np.array([S - 1, V - 1, (S - 1) * (V - 1)], dtype=np.float64).reshape(3, *([1] * ms_e.ndim))
    total = terms.sum(axis=0)
    denom = (terms ** 2 / dfs).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denom > 0, total ** 2 / np.where(denom > 0, denom, 1.0), np.inf)
    return np.maximum(total, 0.0) / (S * V), df


def interval_arrays(C: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, half width, se, df)`` of complete matrices ``C[..., seed, subject]`` with S V >= 2 (vectorised
    :func:`crossed_interval`, used by the coverage simulation)."""
    from scipy import stats

    C = np.asarray(C, dtype=np.float64)
    var, df = variance_of_mean(C)
    se = np.sqrt(var)
    half = np.where(se > 0, stats.t.ppf(0.5 + level / 2, df) * se, 0.0)
    return C.mean(axis=(-2, -1)), half, se, df


def crossed_interval(D: np.ndarray, level: float = 0.95) -> Interval:
    """Mean of ``D[seed, subject]`` (complete part) and its crossed random-effects t interval at ``level``."""
    C = complete(np.asarray(D, dtype=np.float64))[0] if np.ndim(D) == 2 else np.empty((0, 0))
    if C.size == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, math.nan, 0, 0)
    S, V = C.shape
    mean = float(C.mean())
    if S * V < 2:
        return Interval(mean, math.nan, math.nan, math.nan, math.nan, V, S)
    _, half, se, df = (float(x) for x in interval_arrays(C, level))
    return Interval(mean, mean - half, mean + half, se, df, V, S)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (``min(1, max_{j <= i} (m - j + 1) p_(j))`` in ascending order); NaN entries
    are not in the family and stay NaN; ``m`` is the number of non-NaN entries."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    if m == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out.tolist()


def blocked(subjects: int, seeds: int, not_converged: Sequence[str] = (), unknown: Sequence[str] = (),
            stopping_sensitive: Sequence[str] = (), has_interval: bool = True) -> list[str]:
    """Why a comparison gets no verdict ([] when it may have one): the rules of the module docstring."""
    why = []
    if not_converged:
        why.append(f"not converged: {', '.join(not_converged)}")
    if unknown:
        why.append(f"convergence not recorded: {', '.join(unknown)}")
    if stopping_sensitive:
        why.append(f"stopping-sensitive: {', '.join(stopping_sensitive)}")
    if subjects < MIN_SUBJECTS:
        why.append(f"{subjects} subject(s) < {MIN_SUBJECTS}")
    if seeds < MIN_SEEDS:
        why.append(f"{seeds} seed(s) < {MIN_SEEDS}")
    if not has_interval:
        why.append("no interval")
    return why


def verdict(low: float, high: float, subjects: int, seeds: int, not_converged: Sequence[str] = (),
            unknown: Sequence[str] = (), stopping_sensitive: Sequence[str] = (), p_adjusted: float | None = None,
            alpha: float = ALPHA) -> str:
    """``better`` / ``worse`` / ``no clear difference`` when the rules allow a verdict, else ``no verdict: <why>``.

    ``not_converged``: arms with a run stopped by a cap while still improving; ``unknown``: arms whose runs recorded
    no convergence status; ``stopping_sensitive``: arms whose result depends on when training stopped. With
    ``p_adjusted`` (the Holm-adjusted p) the verdict is ``better``/``worse`` when it is <= ``alpha`` (sign of the
    interval's centre); without it, when the interval ``[low, high]`` excludes zero.
    """
    why = blocked(subjects, seeds, not_converged, unknown, stopping_sensitive, low == low and high == high)
    if why:
        return "no verdict: " + "; ".join(why)
    if p_adjusted is None:
        return "better" if low > 0 else "worse" if high < 0 else "no clear difference"
    if p_adjusted <= alpha and low + high != 0:
        return "better" if low + high > 0 else "worse"
    return "no clear difference"
