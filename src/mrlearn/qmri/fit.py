"""Voxel-wise fits vectorised over voxels in torch (CPU or GPU): Rician MLE and non-linear least squares.

Method: bounded Levenberg-Marquardt run on all voxels at once, in normalised coordinates
p = (theta - lower) / (upper - lower) in [0, 1]^P (steps are projected onto the box). Each voxel keeps its own
damping and stops on its own. The gradient is exact for both objectives; the curvature is the Gauss-Newton
matrix J^T W J (W = 1 for least squares, the per-measurement second derivative of the Rician NLL for MLE)
plus the model-curvature term sum_n r_n d2 s_n/dp2 (a full Newton step, closed-form derivatives), with
Marquardt damping and an active set for parameters held at a bound. Initial guess (IVIM): segmented -- a
log-linear fit of the high-b signals gives D and S0 (1 - f), the lowest-b signal gives S0 and thus f; then
candidates (segmented or population values of f and D, a log grid of D*) are ranked by the objective and LM runs
from the best of each of ``n_starts`` D* bands and (multi-start) from the exchanged-compartment start (f ~ 1
carrying the tissue decay, D ~ 0; :func:`mrlearn.qmri.starts.exchanged_start`), keeping the best end point per
voxel; the bound check (:mod:`mrlearn.qmri.boundcheck`) then re-starts corner, mono-exponential and KKT-failing voxels.
All fitting is in float64. Signals are ``[V, N]``; parameters come back as ``[V, P]`` in the model's units.
A long fit prints progress lines (voxel fits converged / total, LM iteration; :mod:`mrlearn.progress`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from mrlearn.errors import input_error
from mrlearn.qmri.boundcheck import recheck
from mrlearn.qmri.bounds import AT_BOUND_TOL, resolve_bounds
from mrlearn.qmri.likelihood import rician_nll, sse
from mrlearn.qmri.lm import projected_lm
from mrlearn.qmri.starts import ivim_starts, segmented_init
from mrlearn.qmri.signal import get_model


@dataclass
class FitResult:
    """Fitted parameters ``[V, P]``, final objective ``[V]``, per-voxel convergence flag ``[V]``, iterations,
    flags ``[V, P]`` of parameters held at their lower / upper bound, and the bounds used ``(lower, upper)``."""

    params: torch.Tensor
    objective: torch.Tensor
    converged: torch.Tensor
    iterations: int
    names: tuple[str, ...]
    at_lower: torch.Tensor | None = None
    at_upper: torch.Tensor | None = None
    bounds: tuple[list[float], list[float]] | None = None
    bad: torch.Tensor | None = None  # [V] uint8 bad-voxel codes (mrlearn.qmri.voxels.BAD_CODES) where checked
    ends: torch.Tensor | None = None  # [K, V, P] end point of every start (model units)
    restarted: int = 0  # voxels re-started by the bound check (mrlearn.qmri.boundcheck)
    improved: int = 0  # of those, voxels whose objective the restart lowered


def objective_values(signals: torch.Tensor, pred: torch.Tensor, objective: str,
                     sigma: float | torch.Tensor | None) -> torch.Tensor:
    """Per-voxel objective: ``mle`` (Rician NLL, needs sigma) or ``nlls`` (0.5 * sum of squares)."""
    if objective == "mle":
        return rician_nll(signals, pred, sigma)
    return sse(signals, pred)


def _bounds(model: str, bvals: torch.Tensor, bounds, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = resolve_bounds(model, bvals, bounds)
    lo_t = torch.tensor([p[0] for p in pairs], dtype=dtype, device=device)
    hi_t = torch.tensor([p[1] for p in pairs], dtype=dtype, device=device)
    if not bool(torch.all(hi_t > lo_t)):
        raise input_error("bounds", "every upper bound must exceed its lower bound", "check the fit bounds")
    return lo_t, hi_t


def fit_voxels(signals: torch.Tensor, bvals: torch.Tensor, model: str = "ivim", objective: str = "mle",
               sigma: float | torch.Tensor | None = None, bounds: Sequence[Sequence[float]] | dict | None = None,
               n_starts: int = 4, n_grid: int = 12, max_iter: int = 1000, ftol: float = 1e-9,
               gtol: float = 1e-6, xtol: float = 1e-7, b_split: float = 200.0, init: torch.Tensor | None = None,
               check: bool = True, exchange: bool | None = None) -> FitResult:
    """Fit ``signals [V, N]`` measured at ``bvals [N]`` (s/mm^2; echo times in ms for ``t2``).

    ``objective``: ``mle`` (Rician NLL with known ``sigma``: a float or ``[V]``) or ``nlls``.
    ``bounds``: (lower, upper) per parameter or a dict name -> (lower, upper) overriding some; default
    :func:`mrlearn.qmri.bounds.default_bounds` (physics, and the lowest b-value for S0; see that module).
    ``init``: optional initial parameters ``[V, P]`` (skips the segmented guess and the multi-start).
    ``n_starts``: D* bands of the IVIM multi-start; ``exchange``: one more start per voxel in the exchanged basin
    (default: with a multi-start, ``n_starts >= 2``; a single-start fit stays one start).
    Returns :class:`FitResult`; ``converged`` is True where the projected gradient or the objective change
    fell below tolerance (or no descent step could be found) within ``max_iter`` iterations.
    """
    if objective not in ("mle", "nlls"):
        raise input_error("objective", f"unknown fit objective {objective!r}", "use 'mle' or 'nlls'")
    if objective == "mle":
        if sigma is None:
            raise input_error("sigma", "the Rician MLE needs the noise level sigma", "give sigma or use 'nlls'")
        sig = torch.as_tensor(sigma, dtype=torch.float64)
        if bool(torch.any(sig <= 0)) or not bool(torch.isfinite(sig).all()):
            raise input_error("sigma", f"sigma must be positive and finite, got {sigma!r}",
                              "give the noise standard deviation")
    _, spec = get_model(model)
    sig_dev = signals.device
    signals = signals.to(torch.float64)
    bvals = torch.as_tensor(bvals, dtype=torch.float64, device=sig_dev)
    if signals.ndim != 2 or signals.shape[1] != bvals.numel():
        raise input_error("signals", f"expected [V, {bvals.numel()}] signals, got {tuple(signals.shape)}",
                          "give one signal per b-value")
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.to(device=sig_dev, dtype=torch.float64)
    lo, hi = _bounds(model, bvals, bounds, torch.float64, sig_dev)
    v = signals.shape[0]
    if init is not None:
        starts = init.to(sig_dev, torch.float64)
        starts = torch.minimum(torch.maximum(starts if starts.ndim == 3 else starts[None], lo), hi)
    else:
        base = segmented_init(signals, bvals, model, lo, hi, b_split)
        if model in ("ivim", "ivim_additive"):
            starts = ivim_starts(signals, bvals, model, base, lo, hi, objective, sigma, n_grid, max(1, n_starts),
                                 n_starts >= 2 if exchange is None else exchange)
        else:
            starts = base[None]
    k = starts.shape[0]
    sig_rep = sigma.repeat(k) if isinstance(sigma, torch.Tensor) and sigma.ndim > 0 else sigma
    p0 = ((starts - lo) / (hi - lo)).reshape(k * v, -1)
    p, obj, conv, it = projected_lm(signals.repeat(k, 1), bvals, model, p0, lo, hi, objective, sig_rep, max_iter,
                                    ftol, gtol, xtol)
    obj = obj.reshape(k, v)
    best = obj.argmin(0)
    ar = torch.arange(v, device=sig_dev)
    params = lo + (hi - lo) * p.reshape(k, v, -1)[best, ar]
    lm_opts = {"max_iter": max_iter, "ftol": ftol, "gtol": gtol, "xtol": xtol}
    chk = recheck(signals, bvals, model, params, obj[best, ar], conv.reshape(k, v)[best, ar], lo, hi, objective,
                  sigma, lm_opts, enabled=check)
    pn = (chk.theta - lo) / (hi - lo)
    return FitResult(chk.theta, chk.objective, chk.converged, it, spec.names,
                     pn <= AT_BOUND_TOL, pn >= 1 - AT_BOUND_TOL, (lo.tolist(), hi.tolist()),
                     ends=lo + (hi - lo) * p.reshape(k, v, -1), restarted=chk.restarted, improved=chk.improved)


def warm_starts(previous: FitResult, signals: torch.Tensor, bvals: torch.Tensor, model: str, objective: str,
                sigma: float | torch.Tensor | None, n_starts: int = 1) -> torch.Tensor:
    """Starts ``[n_starts, V, P]`` for a second fit of the same voxels: the end points of ``previous`` (every start
    of it, ``previous.ends``) ranked per voxel by the new ``objective`` (e.g. the Rician MLE after least squares)."""
    fn, _ = get_model(model)
    ends = previous.ends if previous.ends is not None else previous.params[None]
    ends = ends.to(signals.device, torch.float64)
    sig = sigma[None] if isinstance(sigma, torch.Tensor) and sigma.ndim > 0 else sigma
    obj = objective_values(signals.to(torch.float64)[None], fn(ends, torch.as_tensor(bvals, dtype=torch.float64,
                                                                                    device=signals.device)), objective, sig)
    order = obj.argsort(0)[:n_starts]
    return ends[order, torch.arange(ends.shape[1], device=signals.device)]
