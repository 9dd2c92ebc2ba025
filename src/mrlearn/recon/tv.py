"""Total-variation reconstruction: ``argmin_x 1/2 ||A x - y||^2 + lam sum_p |grad x|_p`` by ADMM.

``grad`` = periodic forward differences along H and W (BART's ``linop_grad``). Default (isotropic): ``|.|_p`` is
the l2 norm of the two complex differences at pixel p. ``anisotropic=True``: the sum of their moduli,
``lam (||D_H x||_1 + ||D_W x||_1)`` -- exactly BART ``pics -R T:1:0:lam -R T:2:0:lam`` (tested to agree).
Note: BART 0.8's joint form ``-R T:3:0:lam`` does not converge to the isotropic minimiser of this objective
(its result has a higher isotropic objective, independent of ``-u``/``-C``); see tests/test_recon_bart.py.
ADMM with the splitting ``z = grad x``: the x-update solves
``(A^H A + rho grad^H grad) x = A^H y + rho grad^H (z - u)`` by a few warm-started CG steps, the z-update is a
joint (per-pixel, isotropic) or element-wise (anisotropic) soft-threshold at ``lam / rho``.

``lam`` is relative, by ``lambda_convention`` (:mod:`mrlearn.recon.scaling`): ``"bart"`` (default) weighs it as
``bart pics -R T:3:0:lam`` does, ``"max"`` as ``lam * max|A^H y|``, ``"absolute"`` in data units. ``rho`` (BART's
``-u``) is dimensionless: both ADMM terms scale with the data squared. kspace/maps ``[B, C, H, W]``, output complex
``[B, H, W]``. A long solve prints progress lines (``iteration i/max_iter``, the relative change of ``x``;
:mod:`mrlearn.progress`).
"""

from __future__ import annotations

import torch

from mrlearn.physics.sense import apply_mask, sense_adjoint, sense_forward
from mrlearn.recon.cg import conjugate_gradient
from mrlearn.recon.inputs import check_kspace, check_mask, check_sens_maps
from mrlearn.physics.normal import SenseNormal
from mrlearn.progress import Ticker
from mrlearn.recon.scaling import lambda_weight
from mrlearn.recon.stopping import relative_change


def grad2d(x: torch.Tensor) -> torch.Tensor:
    """Periodic forward differences of ``[B, H, W]`` -> ``[B, 2, H, W]`` (along H, along W)."""
    return torch.stack((torch.roll(x, -1, dims=-2) - x, torch.roll(x, -1, dims=-1) - x), dim=1)


def grad2d_adjoint(g: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`grad2d`: ``[B, 2, H, W]`` -> ``[B, H, W]`` (minus the periodic divergence)."""
    gh, gw = g[:, 0], g[:, 1]
    return (torch.roll(gh, 1, dims=-2) - gh) + (torch.roll(gw, 1, dims=-1) - gw)


def joint_soft_threshold(g: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    """Shrink the per-pixel vector ``g[:, :, p]`` (over axis 1) in l2 norm by ``thresh`` ``[B, 1, 1, 1]``."""
    norm = torch.sqrt((g.abs() ** 2).sum(dim=1, keepdim=True))
    return g * torch.clamp(1 - thresh / norm.clamp_min(1e-30), min=0)


def soft_threshold(g: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    """Element-wise complex soft-threshold of ``g`` (modulus shrunk by ``thresh`` ``[B, 1, 1, 1]``)."""
    mag = g.abs()
    return g * torch.clamp(1 - thresh / mag.clamp_min(1e-30), min=0)


def tv_objective(x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None,
                 lam_abs: torch.Tensor | float, anisotropic: bool = False) -> torch.Tensor:
    """``1/2 ||A x - y||^2 + lam_abs TV(x)`` per sample ``[B]`` (``lam_abs`` absolute, scalar or ``[B]``)."""
    kspace = check_kspace(kspace)
    mask = check_mask(mask, kspace)
    maps = check_sens_maps(sens_maps, kspace)
    res = sense_forward(x, maps, mask) - apply_mask(kspace, mask)
    g = grad2d(x)
    tv = g.abs().sum(dim=(1, 2, 3)) if anisotropic else torch.sqrt((g.abs() ** 2).sum(dim=1)).sum(dim=(1, 2))
    return 0.5 * (res.abs() ** 2).sum(dim=(1, 2, 3)) + torch.as_tensor(lam_abs, dtype=tv.dtype) * tv


def tv_recon(kspace: torch.Tensor, mask: torch.Tensor | None = None, sens_maps: torch.Tensor | None = None,
             lam: float = 0.002, max_iter: int = 10, cg_iter: int = 5, rho: float = 0.5,
             lambda_convention: str = "bart", anisotropic: bool = False, tol: float = 0.0,
             info: dict | None = None) -> torch.Tensor:
    """ADMM-TV image ``[B, H, W]``: ``max_iter`` outer iterations of ``cg_iter`` warm-started CG steps each, or
    fewer with ``tol > 0`` once the relative change of ``x`` is below ``tol`` (``info``: as
    :func:`mrlearn.recon.cs.cs_l1_wavelet`'s).

    ``anisotropic=False`` (default): isotropic TV; ``True``: anisotropic (l1 of each difference, BART's
    ``-R T:1:0:lam -R T:2:0:lam``).
    """
    kspace = check_kspace(kspace)
    mask = check_mask(mask, kspace)
    maps = check_sens_maps(sens_maps, kspace)
    rhs = sense_adjoint(kspace, maps, mask)
    lam_abs = lambda_weight(lam, lambda_convention, kspace, mask, rhs)
    thresh = (lam_abs / rho)[:, None, None, None]
    sense_normal = SenseNormal(maps, mask)

    def normal(x: torch.Tensor) -> torch.Tensor:
        return sense_normal(x) + rho * grad2d_adjoint(grad2d(x))

    shrink = soft_threshold if anisotropic else joint_soft_threshold
    x = torch.zeros_like(rhs)
    z = torch.zeros(rhs.shape[0], 2, *rhs.shape[-2:], dtype=rhs.dtype, device=rhs.device)
    u = torch.zeros_like(z)
    iterations, change = 0, float("inf")
    ticker = Ticker("TV (ADMM)")
    for _ in range(int(max_iter)):
        x_new = conjugate_gradient(normal, rhs + rho * grad2d_adjoint(z - u), x0=x, max_iter=cg_iter)
        change, x = relative_change(x_new, x), x_new
        gx = grad2d(x)
        z = shrink(gx + u, thresh)
        u = u + gx - z
        iterations += 1
        if tol > 0 and change < tol:
            break
        ticker.update("iteration", iterations, int(max_iter), [f"relative change {change:.2e}"], bound=tol > 0)
    if info is not None:
        info.update(iterations=iterations, max_iter=int(max_iter), tol=float(tol), relative_change=change,
                    tolerance_met=bool(tol > 0 and change < tol))
    return x
