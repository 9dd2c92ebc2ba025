"""Data-consistency (DC) layers of unrolled networks, with the SENSE operator ``A = M F S``.

Shapes: image ``x``/``z`` ``[B, H, W]`` complex; ``kspace`` (already masked) ``[B, C, H, W]`` with
``sens_maps`` ``[B, C, H, W]``, or ``C = 1`` with ``sens_maps=None`` (single-coil: maps of ones); ``mask``
broadcastable to ``kspace``. The measured k-space ``y`` is the masked k-space, so ``A^H y`` is the zero-filled
SENSE image. The operator is :class:`mrlearn.physics.sense.SenseOperator`. Both layers take an optional ``aty``,
``A^H y`` ``[B, H, W]`` precomputed by the caller (it is the same in every cascade of an unrolled network).

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

from mrlearn.physics.sense import SenseOperator
from mrlearn.recon.cg import conjugate_gradient

CG_GRADS = ("implicit", "unrolled")


def _regularised_normal(sens_maps: torch.Tensor | None, mask: torch.Tensor | None,
                        lam: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (A^H A + lam I) v`` (Hermitian positive definite for ``lam > 0``)."""
    op = SenseOperator(sens_maps, mask)
    return lambda v: op.normal(v) + lam * v


class _ImplicitSolve(torch.autograd.Function):
    """``x = (A^H A + lam I)^{-1} rhs`` by CG, differentiated implicitly.

    With ``K = (A^H A + lam I)^{-1}`` Hermitian and ``g`` the incoming gradient, ``v = K g`` (one CG solve) gives
    ``grad rhs = v``, ``grad lam = -Re <v, x>`` and, for the maps, the vector-Jacobian product of
    ``S -> A_S^H A_S x`` with ``-v``.
    """

    @staticmethod
    def forward(ctx, rhs, lam, sens_maps, mask, x0, max_iter, tol):  # noqa: D401 - autograd signature
        x = conjugate_gradient(_regularised_normal(sens_maps, mask, lam), rhs, x0=x0, max_iter=max_iter, tol=tol)
        ctx.save_for_backward(x, lam, sens_maps, mask)
        ctx.max_iter, ctx.tol = max_iter, tol
        return x

    @staticmethod
    def backward(ctx, grad_x):
        x, lam, sens_maps, mask = ctx.saved_tensors
        v = conjugate_gradient(_regularised_normal(sens_maps, mask, lam), grad_x, x0=None, max_iter=ctx.max_iter, tol=ctx.tol)
        grad_rhs = v if ctx.needs_input_grad[0] else None
        grad_lam = None
        if ctx.needs_input_grad[1]:
            grad_lam = -(v.conj() * x).real.sum().reshape(lam.shape).to(lam.dtype)
        grad_maps = None
        if sens_maps is not None and ctx.needs_input_grad[2]:
            with torch.enable_grad():
                maps = sens_maps.detach().requires_grad_(True)
                out = SenseOperator(maps, mask).normal(x.detach())
                (grad_maps,) = torch.autograd.grad(out, maps, grad_outputs=-v)
        return grad_rhs, grad_lam, grad_maps, None, None, None, None


class GradientDC(nn.Module):
    """One gradient step on ``||A x - y||^2 / 2``: ``x = z - eta * A^H (A z - y)``, learned ``eta`` (init 1)."""

    def __init__(self, eta_init: float = 1.0):
        super().__init__()
        self.eta = nn.Parameter(torch.tensor(float(eta_init)))

    def forward(self, z: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor | None,
                sens_maps: torch.Tensor | None, aty: torch.Tensor | None = None) -> torch.Tensor:
        op = SenseOperator(sens_maps, mask)
        aty = op.adjoint(kspace) if aty is None else aty
        return z - self.eta * (op.normal(z) - aty)  # A^H (A z - y), shift-free normal


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
                sens_maps: torch.Tensor | None, aty: torch.Tensor | None = None) -> torch.Tensor:
        lam = self.lam
        rhs = (SenseOperator(sens_maps, mask).adjoint(kspace) if aty is None else aty) + lam * z
        if self.cg_grad == "unrolled":
            return conjugate_gradient(_regularised_normal(sens_maps, mask, lam), rhs, x0=z, max_iter=self.cg_iters, tol=self.cg_tol)
        return _ImplicitSolve.apply(rhs, lam, sens_maps, mask, z.detach(), self.cg_iters, self.cg_tol)
