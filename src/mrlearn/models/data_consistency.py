"""Data-consistency (DC) layers of unrolled networks, with the SENSE operator ``A = M F S``.

Shapes: image ``x``/``z`` ``[B, H, W]`` complex; ``kspace`` (already masked) ``[B, C, H, W]`` with
``sens_maps`` ``[B, C, H, W]``, or ``[B, H, W]`` with ``sens_maps=None`` (single-coil); ``mask`` broadcastable to
``kspace``. The measured k-space ``y`` is the masked k-space, so ``A^H y`` is the zero-filled SENSE image.

* :class:`GradientDC` (E2E-VarNet style, image domain): ``x = z - eta * A^H (A z - y)`` with learned ``eta``.
* :class:`ConjugateGradientDC` (MoDL style): ``x = argmin ||A x - y||^2 + lam ||x - z||^2``, i.e. the solution of
  ``(A^H A + lam I) x = A^H y + lam z`` by ``cg_iters`` conjugate-gradient iterations (``mrlearn.recon.cg``),
  with learned ``lam > 0`` (stored as ``log_lam``). Gradients: ``"implicit"`` (default) differentiates the solution
  of the linear system (one more CG solve in the backward pass, memory independent of ``cg_iters``; exact when CG
  has converged) or ``"unrolled"`` back-propagates through the CG iterations themselves.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from mrlearn.physics.sense import sense_adjoint, sense_forward, sense_normal

CG_GRADS = ("implicit", "unrolled")


def _conjugate_gradient() -> Callable:
    """The shared batched complex CG of ``mrlearn.recon.cg`` (imported lazily: it lives in the recon package)."""
    try:
        from mrlearn.recon.cg import conjugate_gradient
    except ImportError as exc:  # pragma: no cover - only in a checkout without recon/cg.py
        raise RuntimeError("conjugate-gradient data consistency needs mrlearn.recon.cg.conjugate_gradient, "
                           f"which could not be imported ({exc})") from exc
    return conjugate_gradient


def _regularised_normal(sens_maps: torch.Tensor | None, mask: torch.Tensor | None,
                        lam: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (A^H A + lam I) v`` (Hermitian positive definite for ``lam > 0``)."""
    return lambda v: sense_normal(v, sens_maps, mask) + lam * v


class _ImplicitSolve(torch.autograd.Function):
    """``x = (A^H A + lam I)^{-1} rhs`` by CG, differentiated implicitly.

    With ``K = (A^H A + lam I)^{-1}`` Hermitian and ``g`` the incoming gradient, ``v = K g`` (one CG solve) gives
    ``grad rhs = v``, ``grad lam = -Re <v, x>`` and, for the maps, the vector-Jacobian product of
    ``S -> A_S^H A_S x`` with ``-v``.
    """

    @staticmethod
    def forward(ctx, rhs, lam, sens_maps, mask, x0, max_iter, tol):  # noqa: D401 - autograd signature
        cg = _conjugate_gradient()
        x = cg(_regularised_normal(sens_maps, mask, lam), rhs, x0=x0, max_iter=max_iter, tol=tol)
        ctx.save_for_backward(x, lam, sens_maps, mask)
        ctx.max_iter, ctx.tol = max_iter, tol
        return x

    @staticmethod
    def backward(ctx, grad_x):
        x, lam, sens_maps, mask = ctx.saved_tensors
        cg = _conjugate_gradient()
        v = cg(_regularised_normal(sens_maps, mask, lam), grad_x, x0=None, max_iter=ctx.max_iter, tol=ctx.tol)
        grad_rhs = v if ctx.needs_input_grad[0] else None
        grad_lam = None
        if ctx.needs_input_grad[1]:
            grad_lam = -(v.conj() * x).real.sum().reshape(lam.shape).to(lam.dtype)
        grad_maps = None
        if sens_maps is not None and ctx.needs_input_grad[2]:
            with torch.enable_grad():
                maps = sens_maps.detach().requires_grad_(True)
                out = sense_normal(x.detach(), maps, mask)
                (grad_maps,) = torch.autograd.grad(out, maps, grad_outputs=-v)
        return grad_rhs, grad_lam, grad_maps, None, None, None, None


class GradientDC(nn.Module):
    """One gradient step on ``||A x - y||^2 / 2``: ``x = z - eta * A^H (A z - y)``, learned ``eta`` (init 1)."""

    def __init__(self, eta_init: float = 1.0):
        super().__init__()
        self.eta = nn.Parameter(torch.tensor(float(eta_init)))

    def forward(self, z: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor | None,
                sens_maps: torch.Tensor | None) -> torch.Tensor:
        residual = sense_forward(z, sens_maps, mask) - kspace
        return z - self.eta * sense_adjoint(residual, sens_maps, mask)


class ConjugateGradientDC(nn.Module):
    """Solve ``(A^H A + lam I) x = A^H y + lam z`` with ``cg_iters`` CG iterations warm-started at ``z``."""

    def __init__(self, lam_init: float = 0.05, cg_iters: int = 10, cg_tol: float = 0.0, cg_grad: str = "implicit"):
        super().__init__()
        if lam_init <= 0:
            raise ValueError(f"lam_init must be > 0, got {lam_init}")
        if cg_grad not in CG_GRADS:
            raise ValueError(f"cg_grad must be one of {CG_GRADS}, got {cg_grad!r}")
        self.log_lam = nn.Parameter(torch.tensor(math.log(lam_init)))
        self.cg_iters = int(cg_iters)
        self.cg_tol = float(cg_tol)
        self.cg_grad = cg_grad

    @property
    def lam(self) -> torch.Tensor:
        return self.log_lam.exp()

    def forward(self, z: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor | None,
                sens_maps: torch.Tensor | None) -> torch.Tensor:
        lam = self.lam
        rhs = sense_adjoint(kspace, sens_maps, mask) + lam * z
        if self.cg_grad == "unrolled":
            cg = _conjugate_gradient()
            return cg(_regularised_normal(sens_maps, mask, lam), rhs, x0=z, max_iter=self.cg_iters, tol=self.cg_tol)
        return _ImplicitSolve.apply(rhs, lam, sens_maps, mask, z.detach(), self.cg_iters, self.cg_tol)
