"""Starts out of mono-exponential end points of the IVIM fits: the way to a second compartment the fit missed.

An IVIM end point is mono-exponential when one compartment carries the whole signal: f at (or within
``corner_tol`` of) 0 or 1, or both compartments decay at the same rate (D = D* for ``ivim``, D* = 0 for
``ivim_additive``). The signal is then S0 exp(-b r) for one rate r, and the unidentifiable parameter (D at f = 1,
D* at f = 0, f on D = D*) can take any value at no cost, so the solver may stop there next to a lower minimum: for
instance f = 0.997 with a near-constant slow compartment (D ~ 0, e.g. fitting a noise floor), which the box-bound
checks of :mod:`mrlearn.qmri.boundcheck` do not see when f ends just inside the box.

From such a point, replacing a fraction phi of the normalised signal u = exp(-b r) by exp(-b x) changes the signal
by S0 phi (exp(-b x) - u). With r_n = dF/ds_n and w_n = |d2F/ds_n^2| (W = 1 for least squares), the objective's
slope along phi is g = S0 sum_n r_n (exp(-b_n x) - u_n) and its Gauss-Newton curvature h = S0^2 sum_n w_n
(exp(-b_n x) - u_n)^2; the decrease a Newton step offers is g^2 / 2h at the step phi = -g / h. x is scanned over
the D interval (linear) and the fast-compartment rates (log grid); the best x gives the start: x below r makes x the
slow compartment (D = x, fast rate r, f = 1 - phi), x above r the fast one (D = r, fast rate x, f = phi), with
phi clamped to [1e-4, 0.5] of the f interval (0.01 where no x offers descent). The fast rate is D* for ``ivim``
and D + D* for ``ivim_additive``; a rate outside the bounds is not scanned.
"""

from __future__ import annotations

import torch

from mrlearn.qmri.likelihood import _sigma2
from mrlearn.qmri.lm import Kernel, Objective
from mrlearn.qmri.signal import B_SCALE


def mono_exponential(theta: torch.Tensor, model: str, lo: torch.Tensor, hi: torch.Tensor, corner_tol: float = 1e-3,
                     rate_tol: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(mono ``[V]`` bool, rate ``[V]``): whether each end point ``theta [V, 4]`` is mono-exponential (see the
    module docstring; f within ``corner_tol`` of 0 or 1 where its bounds reach them, or rates equal to a relative
    ``rate_tol``) and the rate r of its signal (the slow D, or the fast rate where f is near 1)."""
    f, d = theta[:, 1], theta[:, 2]
    fast = d + theta[:, 3] if model == "ivim_additive" else theta[:, 3]
    near1 = (f >= 1 - corner_tol) & bool(hi[1] >= 1)
    near0 = (f <= corner_tol) & bool(lo[1] <= 0)
    same = (fast - d).abs() <= rate_tol * torch.maximum(fast, d).clamp_min(1e-12)
    return near1 | near0 | same, torch.where(near1, fast, d)


def _fast_ok(model: str, slow: torch.Tensor, fast: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Whether (D = slow, fast rate = fast) lies within the D and D* bounds."""
    ds = fast - slow if model == "ivim_additive" else fast
    return (slow >= lo[2]) & (slow <= hi[2]) & (ds >= lo[3]) & (ds <= hi[3])


def escape_starts(signals: torch.Tensor, bvals: torch.Tensor, model: str, theta: torch.Tensor, rate: torch.Tensor,
                  lo: torch.Tensor, hi: torch.Tensor, objective: str, sigma, n_scan: int = 24) -> torch.Tensor:
    """``[V, 4]`` starts out of the end points ``theta [V, 4]`` whose signal decays at ``rate [V]`` (see the module
    docstring); the fit's ``objective`` and ``sigma`` give r_n and w_n."""
    v, dt, dev = theta.shape[0], theta.dtype, theta.device
    kern, obj_fn = Kernel(model, bvals), Objective(objective)
    s2 = logm = None
    if objective == "mle":
        s2 = _sigma2(sigma, signals).reshape(-1, 1).expand(v, 1)
        logm = torch.log(signals.clamp_min(1e-30))
    pred, _ = kern.values(theta)
    _, aux = obj_fn.value(signals, pred, s2, logm)
    dres, curv = obj_fn.derivatives(signals, pred, s2, aux)
    w = curv.abs()
    beta = bvals * B_SCALE
    fast_lo = lo[3] + lo[2] if model == "ivim_additive" else lo[3]
    fast_hi = hi[3] + hi[2] if model == "ivim_additive" else hi[3]
    x = torch.cat([torch.linspace(float(lo[2]), float(hi[2]), n_scan, dtype=dt, device=dev),
                   torch.logspace(torch.log10(fast_lo.clamp_min(1.0)).item(), torch.log10(fast_hi).item(), n_scan,
                                  dtype=dt, device=dev)])  # [S]
    u = torch.exp(-beta * rate[:, None])  # [V, N]
    new = torch.exp(-beta * x[:, None])  # [S, N]
    c = theta[:, :1]
    g = c * (dres @ new.T - (dres * u).sum(-1, keepdim=True))  # [V, S]
    h = (c * c * (w @ (new * new).T - 2 * ((w * u) @ new.T) + (w * u * u).sum(-1, keepdim=True))).clamp_min(1e-300)
    slower = x[None, :] < rate[:, None]
    ok = torch.where(slower, _fast_ok(model, x[None, :], rate[:, None], lo, hi),
                     _fast_ok(model, rate[:, None], x[None, :], lo, hi))
    dec = torch.where((g < 0) & ok, g * g / (2 * h), torch.zeros_like(g))
    best = dec.argmax(-1)
    ar = torch.arange(v, device=dev)
    xb = x[best]
    phi = torch.where(dec[ar, best] > 0, (-g[ar, best] / h[ar, best]).clamp(1e-4, 0.5), torch.full_like(xb, 0.01))
    phi = phi * (hi[1] - lo[1])
    sl = slower[ar, best]
    slow_rate, fast_rate = torch.where(sl, xb, rate), torch.where(sl, rate, xb)
    th = theta.clone()
    th[:, 1] = torch.where(sl, hi[1] - phi, lo[1] + phi)
    th[:, 2] = slow_rate
    th[:, 3] = fast_rate - slow_rate if model == "ivim_additive" else fast_rate
    return torch.minimum(torch.maximum(th, lo), hi)
