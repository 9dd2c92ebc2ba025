"""Voxel-wise fits vectorised over voxels in torch (CPU or GPU): Rician MLE and non-linear least squares.

Method: bounded Levenberg-Marquardt run on all voxels at once, in normalised coordinates
p = (theta - lower) / (upper - lower) in [0, 1]^P (steps are projected onto the box). Each voxel keeps its own
damping and stops on its own. The gradient is exact for both objectives; the curvature is the Gauss-Newton
matrix J^T W J (W = 1 for least squares, the per-measurement second derivative of the Rician NLL for MLE)
plus the model-curvature term sum_n r_n d2 s_n/dp2 (a full Newton step, closed-form derivatives), with
Marquardt damping and an active set for parameters held at a bound. Initial guess (IVIM): segmented -- a log-linear fit of the high-b signals gives D and
S0 (1 - f), the lowest-b signal gives S0 and thus f; then candidates (segmented or population values of f and
D, a log grid of D*) are ranked by the objective and LM runs from the best ``n_starts`` of them, keeping the
best end point per voxel.
All fitting is in float64. Signals are ``[V, N]``; parameters come back as ``[V, P]`` in the model's units.
A long fit prints progress lines (voxel fits converged / total, LM iteration; :mod:`mrlearn.progress`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from mrlearn.errors import input_error
from mrlearn.progress import Ticker, count_text
from mrlearn.qmri.bounds import AT_BOUND_TOL, resolve_bounds
from mrlearn.qmri.likelihood import rician_grad_curv, rician_nll, sse
from mrlearn.qmri.signal import B_SCALE, get_model, model_derivatives


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


def segmented_init(signals: torch.Tensor, bvals: torch.Tensor, model: str, lo: torch.Tensor, hi: torch.Tensor,
                   b_split: float = 200.0) -> torch.Tensor:
    """Initial guess ``[V, P]`` (S0, f, D, D* for IVIM; S0, rate for adc/t2) before the D* grid search.

    High-b part (b >= b_split, or the upper half of the protocol if fewer than 2 such values): weighted
    log-linear regression gives D and S0 (1 - f). S0 is the mean signal at the lowest b-value (at least the
    intercept), f = 1 - intercept / S0. D* starts at the geometric mean of its bounds.
    """
    v = signals.shape[0]
    logs = torch.log(signals.clamp_min(1e-12 * signals.abs().amax().clamp_min(1e-30)))
    if model in ("adc", "t2"):
        sel = torch.ones_like(bvals, dtype=torch.bool)
    else:
        sel = bvals >= b_split
        if int(sel.sum()) < 2:
            sel = bvals >= torch.quantile(bvals, 0.5)
    x = bvals[sel]
    y = logs[:, sel]
    w = signals[:, sel].clamp_min(0) ** 2 + 1e-30  # weight by S^2 (log-transform variance)
    sw = w.sum(-1)
    mx = (w * x).sum(-1) / sw
    my = (w * y).sum(-1) / sw
    slope = (w * (x - mx[:, None]) * (y - my[:, None])).sum(-1) / (w * (x - mx[:, None]) ** 2).sum(-1).clamp_min(1e-30)
    intercept = torch.exp(my - slope * mx)
    params = torch.empty((v, lo.numel()), dtype=signals.dtype, device=signals.device)
    if model == "adc":
        params[:, 0] = intercept
        params[:, 1] = -slope / B_SCALE
    elif model == "t2":
        params[:, 0] = intercept
        params[:, 1] = -1.0 / slope.clamp_max(-1e-12)
    else:
        low = bvals == bvals.min()
        s0 = torch.maximum(signals[:, low].mean(-1), intercept)
        params[:, 0] = s0
        params[:, 1] = 1 - intercept / s0.clamp_min(1e-30)
        params[:, 2] = -slope / B_SCALE
        params[:, 3] = torch.sqrt(lo[3].clamp_min(1.0) * hi[3])
    return torch.minimum(torch.maximum(params, lo), hi)


def _ivim_starts(signals, bvals, fn, init, lo, hi, objective, sigma, n_grid: int, n_starts: int) -> torch.Tensor:
    """``n_starts`` candidates per voxel, ``[n_starts, V, P]``: the best of each band of the D* grid.

    Candidates: f in {segmented f (within [0.05, 0.95], so that D* matters), 0.1, 0.3, 0.7}; D in {segmented D, 1.0, 0.2}; D* on a log grid of ``n_grid``
    values within its bounds; S0 for each by linear least squares given the others (all clamped to the bounds).
    The D* grid is cut into ``n_starts`` bands (slow to fast) and the candidate with the lowest objective in each
    band is kept, so that the starts cover the distinct minima a bi-exponential model can have.
    """
    dt, dev = signals.dtype, signals.device
    grid = torch.logspace(torch.log10(lo[3].clamp_min(1.0)).item(), torch.log10(hi[3]).item(), n_grid, dtype=dt, device=dev)
    v = init.shape[0]
    full = lambda x: torch.full((v,), x, dtype=dt, device=dev)  # noqa: E731
    f_c = torch.stack([init[:, 1].clamp(0.05, 0.95), full(0.1), full(0.3), full(0.7)])  # f > 0: D* matters
    d_c = torch.stack([init[:, 2], full(1.0), full(0.2)])
    nf, nd = f_c.shape[0], d_c.shape[0]
    cand = init[None, None, None].repeat(nf, nd, n_grid, 1, 1)  # [F, D, G, V, P]
    cand[..., 1] = f_c[:, None, None, :]
    cand[..., 2] = d_c[None, :, None, :]
    cand[..., 3] = grid[None, None, :, None]
    cand = torch.minimum(torch.maximum(cand.reshape(-1, v, init.shape[1]), lo), hi)
    cand[..., 0] = 1.0
    unit = fn(cand, bvals)  # [C, V, N] at S0 = 1
    s0 = (unit * signals[None]).sum(-1) / (unit * unit).sum(-1).clamp_min(1e-30)
    cand[..., 0] = s0.clamp(lo[0], hi[0])
    sig = sigma
    if isinstance(sigma, torch.Tensor) and sigma.ndim > 0:
        sig = sigma[None].expand(cand.shape[0], -1)
    obj = objective_values(signals[None], unit * cand[..., :1], objective, sig)  # [C, V]
    obj = obj.reshape(nf * nd, n_grid, v)
    cand = cand.reshape(nf * nd, n_grid, v, -1)
    starts = []
    for band in torch.tensor_split(torch.arange(n_grid, device=dev), min(n_starts, n_grid)):
        o = obj[:, band].reshape(-1, v)
        c = cand[:, band].reshape(-1, v, cand.shape[-1])
        starts.append(c[o.argmin(0), torch.arange(v, device=dev)])
    return torch.stack(starts)


def _lm(signals, bvals, fn, model: str, p0, lo, hi, objective, sigma, max_iter: int, ftol: float, gtol: float,
        xtol: float, exact: bool = True):
    """Projected Levenberg-Marquardt in normalised coordinates; returns (p, obj, converged, iterations)."""
    scale = hi - lo
    v, n_par = p0.shape
    p = p0.clone()

    def theta_of(pp):
        return lo + scale * pp

    def obj_of(pp, idx):
        sig = sigma[idx] if isinstance(sigma, torch.Tensor) and sigma.ndim > 0 else sigma
        return objective_values(signals[idx], fn(theta_of(pp), bvals), objective, sig)

    all_idx = torch.arange(v, device=signals.device)
    obj = obj_of(p, all_idx)
    lam = torch.full((v,), 1e-3, dtype=signals.dtype, device=signals.device)
    converged = torch.zeros(v, dtype=torch.bool, device=signals.device)
    eye = torch.eye(n_par, dtype=signals.dtype, device=signals.device)
    it = 0
    ticker = Ticker(f"{model} fit")
    for it in range(1, max_iter + 1):
        act = torch.nonzero(~converged).squeeze(-1)
        if act.numel() == 0:
            break
        pa, la, fa, sa = p[act], lam[act], obj[act], signals[act]
        th = theta_of(pa)
        pred, jac, mhess = model_derivatives(model, th, bvals)
        jac = jac * scale  # [A, N, P] w.r.t. normalised p
        if objective == "mle":
            sig = sigma[act] if isinstance(sigma, torch.Tensor) and sigma.ndim > 0 else sigma
            dres, curv = rician_grad_curv(sa, pred, sig)
        else:
            dres = pred - sa
            curv = torch.ones_like(sa)
        grad = torch.einsum("anp,an->ap", jac, dres)
        hess = torch.einsum("anp,an,anq->apq", jac, curv, jac)
        if exact:  # full Newton: add the model-curvature term sum_n dres_n * d2 s_n / dp2
            hess = hess + torch.einsum("an,anpq->apq", dres, mhess * (scale[:, None] * scale[None, :]))
        # projected-gradient optimality: zero where the box blocks descent
        pg = pa - (pa - grad).clamp(0, 1)
        small_grad = pg.abs().amax(-1) <= gtol * (1 + fa.abs())
        # active set (projected Newton): coordinates on a bound whose gradient points outwards stay fixed
        fixed = ((pa <= 1e-12) & (grad > 0)) | ((pa >= 1 - 1e-12) & (grad < 0))
        free = (~fixed).to(pa.dtype)
        grad = grad * free
        hess = hess * free[:, :, None] * free[:, None, :] + torch.diag_embed(1 - free)
        diag = torch.diagonal(hess, dim1=-2, dim2=-1)
        damp = la[:, None] * (diag.abs() + 1e-6 * diag.amax(-1, keepdim=True).clamp_min(1e-12))
        step = torch.linalg.solve(hess + torch.diag_embed(damp) + 1e-12 * eye, -grad)
        pn = (pa + step).clamp(0, 1)
        fn_new = obj_of(pn, act)
        accept = fn_new < fa
        decrease = (fa - fn_new).clamp_min(0)
        small_dec = accept & (decrease <= ftol * (1 + fa.abs())) & ((pn - pa).abs().amax(-1) <= xtol)
        stuck = la > 1e10
        p[act] = torch.where(accept[:, None], pn, pa)
        obj[act] = torch.where(accept, fn_new, fa)
        lam[act] = torch.where(accept, (la / 3).clamp_min(1e-9), la * 4)
        converged[act] = small_grad | small_dec | stuck
        if ticker.due():  # voxel fits (x starts) done so far; no ETA: the last fits take the most iterations
            ticker.emit(ticker.line(count_text("voxel fits converged", int(converged.sum()), v),
                                    [f"iteration {it}/{max_iter}"]))
    return p, obj, converged, it


def fit_voxels(signals: torch.Tensor, bvals: torch.Tensor, model: str = "ivim", objective: str = "mle",
               sigma: float | torch.Tensor | None = None, bounds: Sequence[Sequence[float]] | dict | None = None,
               n_starts: int = 4, n_grid: int = 12, max_iter: int = 1000, ftol: float = 1e-9,
               gtol: float = 1e-6, xtol: float = 1e-7, b_split: float = 200.0, init: torch.Tensor | None = None) -> FitResult:
    """Fit ``signals [V, N]`` measured at ``bvals [N]`` (s/mm^2; echo times in ms for ``t2``).

    ``objective``: ``mle`` (Rician NLL with known ``sigma``: a float or ``[V]``) or ``nlls``.
    ``bounds``: (lower, upper) per parameter or a dict name -> (lower, upper) overriding some; default
    :func:`mrlearn.qmri.bounds.default_bounds` (physics, and the lowest b-value for S0; see that module).
    ``init``: optional initial parameters ``[V, P]`` (skips the segmented guess and the multi-start).
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
    fn, spec = get_model(model)
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
        starts = torch.minimum(torch.maximum(init.to(sig_dev, torch.float64), lo), hi)[None]
    else:
        base = segmented_init(signals, bvals, model, lo, hi, b_split)
        if model in ("ivim", "ivim_additive"):
            starts = _ivim_starts(signals, bvals, fn, base, lo, hi, objective, sigma, n_grid, max(1, n_starts))
        else:
            starts = base[None]
    k = starts.shape[0]
    sig_rep = sigma.repeat(k) if isinstance(sigma, torch.Tensor) and sigma.ndim > 0 else sigma
    p0 = ((starts - lo) / (hi - lo)).reshape(k * v, -1)
    p, obj, conv, it = _lm(signals.repeat(k, 1), bvals, fn, model, p0, lo, hi, objective, sig_rep, max_iter, ftol, gtol, xtol)
    obj = obj.reshape(k, v)
    best = obj.argmin(0)
    ar = torch.arange(v, device=sig_dev)
    pn = p.reshape(k, v, -1)[best, ar]
    params = lo + (hi - lo) * pn
    return FitResult(params, obj[best, ar], conv.reshape(k, v)[best, ar], it, spec.names,
                     pn <= AT_BOUND_TOL, pn >= 1 - AT_BOUND_TOL, (lo.tolist(), hi.tolist()))
