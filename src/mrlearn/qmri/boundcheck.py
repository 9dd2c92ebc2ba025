"""Post-fit check of end points on a bound: KKT conditions and the degenerate IVIM corners, with restarts.

Coordinates are box-normalised, p = (theta - lower) / (upper - lower) in [0, 1]^P; g = dF/dp is the exact
gradient of the fit objective F (0.5 * SSE or the Rician NLL) and h_i = (J^T |W| J)_ii its Gauss-Newton curvature
(W = d2F/ds2 per measurement). A direction is measured by the decrease a Newton step along it alone offers,
g^2 / 2h, in objective units (so the test does not depend on the signal scale or on sigma). An end point passes when

- KKT: no coordinate offers a decrease above tol = ``kkt_tol`` * (1 + |F|) in a direction the box allows (at a
  lower bound only g_i < 0 counts, at an upper bound only g_i > 0, elsewhere any g_i);
- the IVIM corners (f = 1 gives the slow compartment no weight, so D has no effect on the signal; f = 0 does the
  same to D*; only where the f bounds include 1 or 0): the unidentifiable parameter can be set anywhere at no cost,
  so the point is stationary only if moving f into the box lowers F for *no* value of it. With r_n = dF/ds_n, the
  derivative of F per unit of f leaving f = 1 with D set to d is S0 sum_n r_n (e^{-b_n d} - fast_n) (fast_n the
  current normalised signal; for ``ivim_additive`` D + D* is kept, so d ranges over the values that leave D*
  within its bounds), and leaving f = 0 with D* set to d* it is S0 sum_n r_n (fast_n(d*) - e^{-b_n D}) (times
  e^{-b_n D} inside the sum for ``ivim_additive``). A decrease above tol on a grid of ``n_scan`` values over the
  bounds is a descent direction: the point is a saddle, not a minimum.

Voxels whose f ends within ``corner_tol`` of a bound (at or near a corner), voxels with a mono-exponential end point
(also D = D*; :mod:`mrlearn.qmri.escape`) and voxels failing KKT are re-started from a grid away from the corner (f
in {0.1, 0.3, 0.6, 0.9} of the f interval, D across its range, a log grid of D*; the best of each D* band by the
objective) and from the escape start along the best second compartment (:func:`mrlearn.qmri.escape.escape_starts`:
the way to a shallow minimum next to a corner, such as f = 0.997 with D ~ 0), and keep the better end point. Only
a voxel that passes both checks at its final end point is ``converged``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mrlearn.qmri.escape import escape_starts, mono_exponential
from mrlearn.qmri.lm import Kernel, Objective, projected_lm
from mrlearn.qmri.likelihood import _sigma2
from mrlearn.qmri.signal import B_SCALE
from mrlearn.qmri.starts import dstar_grid, ranked_candidates

IVIM_MODELS = ("ivim", "ivim_additive")


@dataclass
class CheckResult:
    """Per voxel ``[V]``: KKT violation (objective units per unit of normalised coordinate), whether f is at or
    near a bound (``corner``), whether a descent direction out of the corner exists (``saddle``), ``passed``."""

    kkt: torch.Tensor
    corner: torch.Tensor
    saddle: torch.Tensor
    passed: torch.Tensor


def _sig2(sigma, v: int, like: torch.Tensor) -> torch.Tensor:
    return _sigma2(sigma, like).reshape(-1, 1).expand(v, 1)


def _decrease(c: torch.Tensor, r: torch.Tensor, w: torch.Tensor, new: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """Decrease ``[V, S]`` a Newton step offers along the signal direction c (new_s - cur) (``new [S, N]``,
    ``cur [V, N]``): g^2 / 2h where g = c sum r (new - cur) < 0, h = c^2 sum w (new - cur)^2; 0 where g >= 0."""
    g = c * (r @ new.T - (r * cur).sum(-1, keepdim=True))
    h = c * c * ((w @ (new * new).T) - 2 * ((w * cur) @ new.T) + (w * cur * cur).sum(-1, keepdim=True))
    return torch.where(g < 0, g * g / (2 * h).clamp_min(1e-300), torch.zeros_like(g))


def check_end_points(signals: torch.Tensor, bvals: torch.Tensor, model: str, theta: torch.Tensor, lo: torch.Tensor,
                     hi: torch.Tensor, objective: str, sigma, kkt_tol: float = 1e-6, corner_tol: float = 1e-3,
                     n_scan: int = 24) -> CheckResult:
    """Check end points ``theta [V, P]`` (model units) of a fit of ``signals [V, N]`` (see the module docstring)."""
    v = signals.shape[0]
    scale = hi - lo
    kern, obj_fn = Kernel(model, bvals), Objective(objective)
    s2 = logm = None
    if objective == "mle":
        s2, logm = _sig2(sigma, v, signals), torch.log(signals.clamp_min(1e-30))
    pred, cache = kern.values(theta)
    obj, aux = obj_fn.value(signals, pred, s2, logm)
    dres, curv = obj_fn.derivatives(signals, pred, s2, aux)
    w = curv.abs()
    grad, hess = kern.normal(theta, pred, cache, dres, w, exact=False)
    g = grad * scale
    h = torch.diagonal(hess, dim1=1, dim2=2) * scale * scale
    p = (theta - lo) / scale
    tol = kkt_tol * (1 + obj.abs())
    at_lo, at_hi = p <= 1e-9, p >= 1 - 1e-9
    # the part of the gradient that points into the box (descent possible), and the decrease g^2 / 2h it offers
    g_in = torch.where(at_lo, (-g).clamp_min(0), torch.where(at_hi, g.clamp_min(0), g.abs()))
    viol = (g_in * g_in / (2 * h).clamp_min(1e-300)).amax(-1)
    corner = torch.zeros(v, dtype=torch.bool, device=signals.device)
    saddle = torch.zeros_like(corner)
    if model in IVIM_MODELS:
        pf, fv = p[:, 1], theta[:, 1]
        top, bottom = bool(hi[1] >= 1), bool(lo[1] <= 0)  # the f bounds reach a degenerate corner
        corner = ((fv >= 1 - corner_tol) & top) | ((fv <= corner_tol) & bottom)
        beta = bvals * B_SCALE
        c = theta[:, :1] * scale[1]  # S0 per unit of normalised f
        e, fast, _ = cache
        # f at 1: D free; leaving the bound replaces part of the fast compartment by exp(-b d)
        d = torch.linspace(float(lo[2]), float(hi[2]), n_scan, dtype=theta.dtype, device=theta.device)
        slow_d = torch.exp(-beta * d[:, None])  # [S, N]
        if model == "ivim_additive":  # D + D* stays fixed, D* within its bounds
            sum_rate = theta[:, 2:3] + theta[:, 3:4]
            ok_d = (d[None, :] <= sum_rate - lo[3]) & (d[None, :] >= sum_rate - hi[3])
        else:
            ok_d = torch.ones((v, n_scan), dtype=torch.bool, device=theta.device)
        dec_hi = _decrease(c, dres, w, slow_d, fast)
        dec_hi = torch.where(ok_d, dec_hi, torch.zeros_like(dec_hi)).amax(-1)
        # f at 0: D* free; leaving the bound adds a compartment exp(-b d*) (times exp(-b D) for ivim_additive)
        ds = dstar_grid(lo, hi, n_scan)
        fast_ds = torch.exp(-beta * ds[:, None])  # [S, N]
        if model == "ivim_additive":
            dec_lo = _decrease(c, dres * e, w * e * e, fast_ds, torch.ones_like(e))
        else:
            dec_lo = _decrease(c, dres, w, fast_ds, e)
        dec_lo = dec_lo.amax(-1)
        saddle = ((pf >= 1 - 1e-9) & (dec_hi > tol) & top) | ((pf <= 1e-9) & (dec_lo > tol) & bottom)
    return CheckResult(viol, corner, saddle, (viol <= tol) & ~saddle)


def restart_starts(signals: torch.Tensor, bvals: torch.Tensor, model: str, lo: torch.Tensor, hi: torch.Tensor,
                   objective: str, sigma, n_keep: int = 3, n_grid: int = 12) -> torch.Tensor:
    """``[n_keep, V, 4]`` starts away from the corners: f at 0.1, 0.3, 0.6, 0.9 of its interval, D at 6 values
    across its range (5 % to 90 %), D* on a log grid; best candidate of each D* band."""
    v = signals.shape[0]
    one = torch.ones(v, dtype=signals.dtype, device=signals.device)
    f_c = torch.stack([(lo[1] + t * (hi[1] - lo[1])) * one for t in (0.1, 0.3, 0.6, 0.9)])
    d_c = torch.stack([(lo[2] + t * (hi[2] - lo[2])) * one for t in (0.05, 0.12, 0.2, 0.35, 0.55, 0.9)])
    return ranked_candidates(signals, bvals, model, lo, hi, objective, sigma, f_c, d_c, dstar_grid(lo, hi, n_grid),
                             n_keep)


@dataclass
class Rechecked:
    """Final end points ``theta [V, P]``, objective ``[V]``, ``converged [V]`` (solver stop and check passed), and
    the number of voxels re-started and of those whose objective improved."""

    theta: torch.Tensor
    objective: torch.Tensor
    converged: torch.Tensor
    restarted: int
    improved: int


def recheck(signals: torch.Tensor, bvals: torch.Tensor, model: str, theta: torch.Tensor, obj: torch.Tensor,
            solver_conv: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, objective: str, sigma, lm_opts: dict,
            n_keep: int = 3, enabled: bool = True) -> Rechecked:
    """Check every end point; re-start the corner, mono-exponential and KKT-failing voxels; re-check the end points
    kept (``enabled=False``: return the solver's end points and flags unchanged)."""
    if not enabled:
        return Rechecked(theta, obj, solver_conv, 0, 0)
    chk = check_end_points(signals, bvals, model, theta, lo, hi, objective, sigma)
    mono, rate = (mono_exponential(theta, model, lo, hi) if model in IVIM_MODELS
                  else (torch.zeros_like(chk.corner), None))
    redo = torch.nonzero(chk.corner | mono | ~chk.passed).squeeze(-1)
    theta, obj = theta.clone(), obj.clone()
    conv = solver_conv.clone()
    improved = 0
    if redo.numel() and model in IVIM_MODELS:
        sig_r = sigma[redo] if isinstance(sigma, torch.Tensor) and sigma.ndim > 0 else sigma
        sr = signals[redo]
        starts = restart_starts(sr, bvals, model, lo, hi, objective, sig_r, n_keep)
        esc = escape_starts(sr, bvals, model, theta[redo], rate[redo], lo, hi, objective, sig_r)
        starts = torch.cat([starts, esc[None]])
        k, r = starts.shape[0], redo.numel()
        sig_k = sig_r.repeat(k) if isinstance(sig_r, torch.Tensor) and sig_r.ndim > 0 else sig_r
        p0 = ((starts - lo) / (hi - lo)).reshape(k * r, -1)
        p, o, c, _ = projected_lm(sr.repeat(k, 1), bvals, model, p0, lo, hi, objective, sig_k, **lm_opts)
        o = o.reshape(k, r)
        best = o.argmin(0)
        ar = torch.arange(r, device=signals.device)
        o_best = o[best, ar]
        better = o_best < obj[redo] - 1e-12 * (1 + obj[redo].abs())
        improved = int(better.sum())
        idx = redo[better]
        theta[idx] = (lo + (hi - lo) * p.reshape(k, r, -1)[best, ar])[better]
        obj[idx] = o_best[better]
        conv[idx] = c.reshape(k, r)[best, ar][better]
        chk2 = check_end_points(sr, bvals, model, theta[redo], lo, hi, objective, sig_r)
        passed = chk.passed.clone()
        passed[redo] = chk2.passed
    else:
        passed = chk.passed
    return Rechecked(theta, obj, conv & passed, int(redo.numel()) if model in IVIM_MODELS else 0, improved)
