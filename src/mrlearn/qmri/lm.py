"""Projected Levenberg-Marquardt / Newton on many voxels at once, in box-normalised coordinates.

Coordinates: p = (theta - lower) / (upper - lower) in [0, 1]^P; steps are projected onto the box. Each voxel keeps
its own damping and stops on its own; converged voxels leave the working set (the arrays are compacted), so late
iterations cost only what is still running. The gradient is exact for both objectives (``nlls``: 0.5 * SSE;
``mle``: Rician NLL with known sigma). The curvature is the Gauss-Newton matrix J^T W J (W = 1 for least squares,
the per-measurement second derivative of the Rician NLL for MLE) plus the model-curvature term
sum_n r_n d2 s_n / dp2 (a full Newton step), with Marquardt damping and an active set for coordinates held at a
bound whose gradient points outwards.
Per iteration the model is evaluated once (the trial point; its exponentials, and for MLE its scaled Bessel I0,
are kept for the next iteration's derivatives when the step is accepted). For the IVIM models the normal
equations are assembled in closed form from six weighted sums (no [V, N, P, P] Hessian tensor).
Stopping: projected gradient <= gtol (1 + |F|), or an accepted step with relative decrease <= ftol and step
<= xtol, or damping above 1e10 (no descent step found).
"""

from __future__ import annotations

import torch

from mrlearn.progress import Ticker, count_text
from mrlearn.qmri.likelihood import _sigma2
from mrlearn.qmri.signal import B_SCALE, get_model, model_derivatives

IVIM_MODELS = ("ivim", "ivim_additive")


class Kernel:
    """Model values and normal equations of one signal model (theta units), with a cache of the model terms."""

    def __init__(self, model: str, bvals: torch.Tensor):
        self.model = model
        self.bvals = bvals
        self.fn, _ = get_model(model)
        self.beta = bvals * B_SCALE
        self.powers = torch.stack([torch.ones_like(self.beta), self.beta, self.beta * self.beta], -1)  # [N, 3]

    def values(self, theta: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Signal ``[A, N]`` and the cached terms needed by :meth:`normal` (exponentials for IVIM)."""
        if self.model not in IVIM_MODELS:
            return self.fn(theta, self.bvals), ()
        s0, f, d, ds = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3], theta[:, 3:4]
        e = torch.exp(-self.beta * d)
        fast = torch.exp(-self.beta * (ds + d)) if self.model == "ivim_additive" else torch.exp(-self.beta * ds)
        u = e + f * (fast - e)
        return s0 * u, (e, fast, u)

    def normal(self, theta: torch.Tensor, pred: torch.Tensor, cache: tuple, dres: torch.Tensor, curv: torch.Tensor,
               exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient ``[A, P]`` and curvature ``[A, P, P]`` in theta units for per-measurement ``dres`` = dF/ds and
        ``curv`` = d2F/ds2 (the model-curvature term added when ``exact``)."""
        if self.model not in IVIM_MODELS:
            _, jac, mhess = model_derivatives(self.model, theta, self.bvals)
            grad = torch.einsum("anp,an->ap", jac, dres)
            hess = torch.einsum("anp,an,anq->apq", jac, curv, jac)
            if exact:
                hess = hess + torch.einsum("an,anpq->apq", dres, mhess)
            return grad, hess
        e, fast, u = cache
        s0, f = theta[:, 0:1], theta[:, 1:2]
        b = self.beta
        if self.model == "ivim":
            jac = torch.stack([u, s0 * (fast - e), -s0 * (1 - f) * b * e, -s0 * f * b * fast], -1)
        else:
            jac = torch.stack([u, s0 * (fast - e), -s0 * b * u, -s0 * f * b * fast], -1)
        grad = torch.bmm(dres[:, None, :], jac)[:, 0]
        hess = torch.bmm(jac.transpose(1, 2), jac * curv[..., None])
        if exact:
            se = (dres * e) @ self.powers  # [A, 3]: sum r e, sum r b e, sum r b^2 e
            sf = (dres * fast) @ self.powers
            s0v, fv = s0[:, 0], f[:, 0]
            m = torch.zeros_like(hess)
            m[:, 0, 1] = sf[:, 0] - se[:, 0]
            m[:, 1, 3] = -s0v * sf[:, 1]
            if self.model == "ivim":
                m[:, 0, 2] = -(1 - fv) * se[:, 1]
                m[:, 0, 3] = -fv * sf[:, 1]
                m[:, 1, 2] = s0v * se[:, 1]
                m[:, 2, 2] = s0v * (1 - fv) * se[:, 2]
                m[:, 3, 3] = s0v * fv * sf[:, 2]
            else:
                su = se + fv[:, None] * (sf - se)
                m[:, 0, 2] = -su[:, 1]
                m[:, 0, 3] = -fv * sf[:, 1]
                m[:, 1, 2] = -s0v * (sf[:, 1] - se[:, 1])
                m[:, 2, 2] = s0v * su[:, 2]
                m[:, 2, 3] = s0v * fv * sf[:, 2]
                m[:, 3, 3] = s0v * fv * sf[:, 2]
            hess = hess + m + m.transpose(1, 2) - torch.diag_embed(torch.diagonal(m, dim1=1, dim2=2))
        return grad, hess


class Objective:
    """F(s) summed over measurements, with dF/ds and d2F/ds2; for MLE the scaled Bessel I0 of the last evaluation
    is returned so that the derivatives at an accepted point need only I1."""

    def __init__(self, kind: str):
        self.kind = kind

    def value(self, meas: torch.Tensor, pred: torch.Tensor, s2: torch.Tensor | None, logm: torch.Tensor | None):
        """(F [A], aux): aux is i0e(x) ``[A, N]`` for MLE (x = m s / sigma^2), None for least squares."""
        if self.kind == "nlls":
            r = pred - meas
            return 0.5 * (r * r).sum(-1), None
        x = (meas * pred / s2).clamp_min(0)
        i0 = torch.special.i0e(x)
        terms = torch.log(s2) - logm + (meas * meas + pred * pred) / (2 * s2) - (torch.log(i0) + x)
        return terms.sum(-1), i0

    def derivatives(self, meas, pred, s2, i0) -> tuple[torch.Tensor, torch.Tensor]:
        """dF/ds and d2F/ds2 per measurement (see :func:`mrlearn.qmri.likelihood.rician_grad_curv`)."""
        if self.kind == "nlls":
            return pred - meas, torch.ones_like(meas)
        x = (meas * pred / s2).clamp_min(0)
        r = torch.special.i1e(x) / i0
        small = x < 1e-6
        dr = torch.where(small, torch.full_like(x, 0.5), 1 - r / torch.where(small, torch.ones_like(x), x) - r * r)
        return (pred - meas * r) / s2, 1 / s2 - (meas / s2) ** 2 * dr


def projected_lm(signals: torch.Tensor, bvals: torch.Tensor, model: str, p0: torch.Tensor, lo: torch.Tensor,
                 hi: torch.Tensor, objective: str, sigma: float | torch.Tensor | None, max_iter: int, ftol: float,
                 gtol: float, xtol: float, exact: bool = True):
    """Minimise from ``p0 [V, P]`` (normalised); returns (p [V, P], objective [V], converged [V], iterations)."""
    dt, dev = signals.dtype, signals.device
    scale = hi - lo
    v, n_par = p0.shape
    kern, obj_fn = Kernel(model, bvals), Objective(objective)
    s2_all = logm_all = None
    if objective == "mle":
        s2_all = _sigma2(sigma, signals)  # [V, 1] or a scalar
        s2_all = s2_all.reshape(-1, 1).expand(v, 1)
        logm_all = torch.log(signals.clamp_min(1e-30))
    out_p, out_obj = p0.clone(), torch.empty(v, dtype=dt, device=dev)
    out_conv = torch.zeros(v, dtype=torch.bool, device=dev)
    idx = torch.arange(v, device=dev)
    p, meas = p0.clone(), signals
    s2, logm = s2_all, logm_all
    theta = lo + scale * p
    pred, cache = kern.values(theta)
    obj, aux = obj_fn.value(meas, pred, s2, logm)
    lam = torch.full((v,), 1e-3, dtype=dt, device=dev)
    eye = 1e-12 * torch.eye(n_par, dtype=dt, device=dev)
    ss = scale[:, None] * scale[None, :]
    it = 0
    ticker = Ticker(f"{model} fit")
    for it in range(1, max_iter + 1):
        if idx.numel() == 0:
            break
        dres, curv = obj_fn.derivatives(meas, pred, s2, aux)
        grad, hess = kern.normal(theta, pred, cache, dres, curv, exact)
        grad, hess = grad * scale, hess * ss
        # projected-gradient optimality: zero where the box blocks descent
        pg = p - (p - grad).clamp(0, 1)
        small_grad = pg.abs().amax(-1) <= gtol * (1 + obj.abs())
        # active set (projected Newton): coordinates on a bound whose gradient points outwards stay fixed
        free = ~(((p <= 1e-12) & (grad > 0)) | ((p >= 1 - 1e-12) & (grad < 0)))
        freef = free.to(dt)
        grad = grad * freef
        hess = hess * (freef[:, :, None] * freef[:, None, :]) + torch.diag_embed(1 - freef)
        diag = torch.diagonal(hess, dim1=-2, dim2=-1)
        damp = lam[:, None] * (diag.abs() + 1e-6 * diag.amax(-1, keepdim=True).clamp_min(1e-12))
        step = torch.linalg.solve(hess + torch.diag_embed(damp) + eye, -grad[..., None])[..., 0]
        pn = (p + step).clamp(0, 1)
        theta_n = lo + scale * pn
        pred_n, cache_n = kern.values(theta_n)
        obj_n, aux_n = obj_fn.value(meas, pred_n, s2, logm)
        accept = obj_n < obj
        decrease = (obj - obj_n).clamp_min(0)
        small_dec = accept & (decrease <= ftol * (1 + obj.abs())) & ((pn - p).abs().amax(-1) <= xtol)
        conv = small_grad | small_dec | (lam > 1e10)
        a1 = accept[:, None]
        p = torch.where(a1, pn, p)
        theta = torch.where(a1, theta_n, theta)
        pred = torch.where(a1, pred_n, pred)
        cache = tuple(torch.where(a1, cn, c) for cn, c in zip(cache_n, cache))
        if aux is not None:
            aux = torch.where(a1, aux_n, aux)
        obj = torch.where(accept, obj_n, obj)
        lam = torch.where(accept, (lam / 3).clamp_min(1e-9), lam * 4)
        if bool(conv.any()):
            done = idx[conv]
            out_p[done], out_obj[done], out_conv[done] = p[conv], obj[conv], True
            keep = ~conv
            idx, p, theta, pred, obj, lam, meas = idx[keep], p[keep], theta[keep], pred[keep], obj[keep], lam[keep], meas[keep]
            cache = tuple(c[keep] for c in cache)
            if aux is not None:
                aux, s2, logm = aux[keep], s2[keep], logm[keep]
        if ticker.due():  # voxel fits (x starts) done so far; no ETA: the last fits take the most iterations
            ticker.emit(ticker.line(count_text("voxel fits converged", v - idx.numel(), v),
                                    [f"iteration {it}/{max_iter}"]))
    out_p[idx], out_obj[idx] = p, obj
    return out_p, out_obj, out_conv, it
