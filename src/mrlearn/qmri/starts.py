"""Starting points of the voxel fits: the segmented guess and ranked candidate grids (IVIM).

Parameters are ``[..., P]`` in model units (:mod:`mrlearn.qmri.signal`), signals ``[V, N]`` normalised by their
lowest-b mean. A candidate fixes (f, D, D*); its S0 is the linear least-squares value given the others (clamped to
the bounds). Candidates are ranked by the fit objective; the D* grid is cut into bands (slow to fast) and the best
candidate of each band is kept, so that the starts cover the distinct minima a bi-exponential model can have.
"""

from __future__ import annotations

import torch

from mrlearn.qmri.likelihood import rician_nll
from mrlearn.qmri.signal import B_SCALE


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


def dstar_grid(lo: torch.Tensor, hi: torch.Tensor, n_grid: int) -> torch.Tensor:
    """``n_grid`` log-spaced D* values within the D* bounds (from max(lower, 1))."""
    return torch.logspace(torch.log10(lo[3].clamp_min(1.0)).item(), torch.log10(hi[3]).item(), n_grid,
                          dtype=lo.dtype, device=lo.device)


def ranked_candidates(signals: torch.Tensor, bvals: torch.Tensor, model: str, lo: torch.Tensor, hi: torch.Tensor,
                      objective: str, sigma, f_c: torch.Tensor, d_c: torch.Tensor, grid: torch.Tensor,
                      n_keep: int) -> torch.Tensor:
    """Best candidate of each of ``n_keep`` D* bands, ``[n_keep, V, 4]``, over f in ``f_c [F, V]``, D in
    ``d_c [D, V]`` and D* in ``grid [G]`` (each clamped to its bounds); S0 by linear least squares, clamped."""
    v = signals.shape[0]
    beta = bvals * B_SCALE
    f_c = f_c.clamp(lo[1], hi[1])
    d_c = d_c.clamp(lo[2], hi[2])
    grid = grid.clamp(lo[3], hi[3])
    nf, nd, ng = f_c.shape[0], d_c.shape[0], grid.numel()
    slow = torch.exp(-beta * d_c[..., None])  # [D, V, N]
    fast = torch.exp(-beta * grid[:, None])  # [G, N]
    fs = f_c[:, None, None, :]  # [F, 1, 1, V]
    # normalised signal u = slow + f (q - slow), q the fast compartment: exp(-b D*) (times slow for ivim_additive)
    q = slow[:, None] * fast[None, :, None] if model == "ivim_additive" else fast[None, :, None].expand(nd, -1, v, -1)
    if objective == "mle":
        unit = slow[None, :, None] + fs[..., None] * (q[None] - slow[None, :, None])  # [F, D, G, V, N]
        s0 = ((unit * signals).sum(-1) / (unit * unit).sum(-1).clamp_min(1e-30)).clamp(lo[0], hi[0])  # [F, D, G, V]
        sig = sigma[None] if isinstance(sigma, torch.Tensor) and sigma.ndim > 0 else sigma
        obj = rician_nll(signals, unit * s0[..., None], sig)
    else:  # 0.5 |s0 u - m|^2 = 0.5 (s0^2 u.u - 2 s0 u.m + m.m), u.m and u.u from sums over b (no [F, D, G, V, N])
        sm, qm = (slow * signals).sum(-1)[:, None], (q * signals).sum(-1)  # [D, 1, V], [D, G, V]
        ss, sq, qq = (slow * slow).sum(-1)[:, None], (slow[:, None] * q).sum(-1), (q * q).sum(-1)
        um = sm + fs * (qm - sm)  # [F, D, G, V]
        uu = ss + 2 * fs * (sq - ss) + fs * fs * (qq - 2 * sq + ss)
        s0 = (um / uu.clamp_min(1e-30)).clamp(lo[0], hi[0])
        obj = 0.5 * (s0 * s0 * uu - 2 * s0 * um + (signals * signals).sum(-1))
    obj = obj.permute(2, 0, 1, 3).reshape(ng, nf * nd, v)  # [G, F*D, V], f-major
    cand_idx = torch.arange(nf * nd, device=signals.device)
    ar = torch.arange(v, device=signals.device)
    starts = []
    for band in torch.tensor_split(torch.arange(ng, device=signals.device), min(n_keep, ng)):
        o = obj[band].reshape(-1, v)  # [len(band) * F * D, V]
        k = o.argmin(0)
        g_i = band[k // (nf * nd)]
        fd = cand_idx[k % (nf * nd)]
        f_i, d_i = fd // nd, fd % nd
        s0_b = s0.permute(2, 0, 1, 3)[g_i, f_i, d_i, ar]
        starts.append(torch.stack([s0_b, f_c[f_i, ar], d_c[d_i, ar], grid[g_i]], -1))
    return torch.stack(starts)


def exchanged_start(signals: torch.Tensor, bvals: torch.Tensor, model: str, init: torch.Tensor, lo: torch.Tensor,
                    hi: torch.Tensor) -> torch.Tensor:
    """``[V, P]``: the start of the exchanged-compartment minimum: the segmented tissue decay D given to the fast
    compartment (D* = D, f = 0.95 of the f interval) and a near-constant slow compartment (D 1 % into its
    interval), S0 by linear least squares (clamped to its bounds)."""
    beta = bvals * B_SCALE
    th = init.clone()
    th[:, 1] = lo[1] + 0.95 * (hi[1] - lo[1])
    th[:, 2] = lo[2] + 0.01 * (hi[2] - lo[2])
    rate = init[:, 2] - th[:, 2] if model == "ivim_additive" else init[:, 2]
    th[:, 3] = rate.clamp(lo[3], hi[3])
    slow = torch.exp(-beta * th[:, 2:3])
    fast = torch.exp(-beta * (th[:, 2:3] + th[:, 3:4])) if model == "ivim_additive" else torch.exp(-beta * th[:, 3:4])
    unit = slow + th[:, 1:2] * (fast - slow)
    th[:, 0] = ((unit * signals).sum(-1) / (unit * unit).sum(-1).clamp_min(1e-30)).clamp(lo[0], hi[0])
    return th


def ivim_starts(signals: torch.Tensor, bvals: torch.Tensor, model: str, init: torch.Tensor, lo: torch.Tensor,
                hi: torch.Tensor, objective: str, sigma, n_grid: int, n_starts: int, exchange: bool = True
                ) -> torch.Tensor:
    """``[K, V, P]`` starts per voxel: the best candidate of each of ``n_starts`` bands of the D* grid and, with
    ``exchange``, the exchanged-compartment start (:func:`exchanged_start`) as the last (K = n_starts + 1).

    Candidates: f in {segmented f (within [0.05, 0.95], so that D* matters), 0.1, 0.3, 0.7}; D in {segmented D,
    1.0, 0.2}; D* on a log grid of ``n_grid`` values within its bounds. The bi-exponential has a second basin with
    the compartments' roles exchanged (fast compartment f ~ 1 carrying the tissue decay, slow one near constant,
    e.g. fitting a noise floor); no grid candidate near it ranks high before LM, so it gets its own start.
    """
    full = torch.ones_like(init[:, 1])
    f_c = torch.stack([init[:, 1].clamp(0.05, 0.95), 0.1 * full, 0.3 * full, 0.7 * full])
    d_c = torch.stack([init[:, 2], full, 0.2 * full])
    bands = ranked_candidates(signals, bvals, model, lo, hi, objective, sigma, f_c, d_c, dstar_grid(lo, hi, n_grid),
                              n_starts)
    if not exchange:
        return bands
    return torch.cat([bands, exchanged_start(signals, bvals, model, init, lo, hi)[None]])
