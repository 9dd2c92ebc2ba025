"""Batched complex conjugate gradient for Hermitian positive (semi-)definite systems.

Solves ``N x = b`` for every sample of a batch at once, where ``N`` is a linear operator given as a callable
(e.g. ``x -> A^H A x + lam x``) acting on complex tensors ``[B, ...]``. Each sample has its own step sizes
(``alpha``, ``beta`` are per-sample scalars), so the batch is exactly ``B`` independent CG runs. A sample whose
relative residual ``||r|| / ||b||`` falls below ``tol`` is frozen (its update is zeroed) while the others go on.
Plain torch, differentiable (autograd unrolls the iterations), CPU and GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from mrlearn.progress import Ticker


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample ``sum(conj(a) * b)`` over all but the first axis, real part, shape ``[B, 1, ..., 1]``."""
    dims = tuple(range(1, a.ndim))
    return (a.conj() * b).real.sum(dim=dims, keepdim=True)


def conjugate_gradient(
    normal_op: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: torch.Tensor | None = None,
    max_iter: int = 10,
    tol: float = 0.0,
    info: dict | None = None,
    ticker: "Ticker | None" = None,
) -> torch.Tensor:
    """Run at most ``max_iter`` CG iterations on ``normal_op(x) = rhs``; returns ``x`` shaped like ``rhs``.

    ``rhs`` is ``[B, ...]`` (complex or real); ``normal_op`` must be Hermitian positive semi-definite per sample.
    ``tol`` is the relative residual ``||b - N x|| / ||b||`` at which a sample stops (0 = run all iterations).
    ``info`` (optional dict) receives ``iterations``, ``max_iter``, ``tol``, ``relative_residual`` (the largest
    over the batch) and ``tolerance_met`` (every sample below ``tol``). ``ticker``: progress lines
    (``iteration i/max_iter``, the largest relative residual; :mod:`mrlearn.progress`) while it runs.
    """
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - normal_op(x) if x0 is not None else rhs.clone()
    p = r.clone()
    rr = _dot(r, r)
    b_norm2 = _dot(rhs, rhs)
    tiny = torch.finfo(rr.dtype).tiny
    tol2 = float(tol) ** 2
    iterations = 0
    for _ in range(int(max_iter)):
        active = rr > tol2 * b_norm2 if tol > 0 else rr > 0
        if not bool(active.any()):
            break
        iterations += 1
        q = normal_op(p)
        pq = _dot(p, q)
        alpha = torch.where(active & (pq > 0), rr / pq.clamp_min(tiny), torch.zeros_like(rr))
        x = x + alpha * p
        r = r - alpha * q
        rr_new = _dot(r, r)
        beta = torch.where(active, rr_new / rr.clamp_min(tiny), torch.zeros_like(rr))
        p = r + beta * p
        rr = torch.where(active, rr_new, rr)
        if ticker is not None and ticker.due():
            rel_now = float((rr / b_norm2.clamp_min(tiny)).sqrt().max())
            ticker.update("iteration", iterations, int(max_iter), [f"relative residual {rel_now:.2e}"], bound=tol > 0)
    if info is not None:
        rel = float((rr / b_norm2.clamp_min(tiny)).sqrt().max()) if rr.numel() else 0.0
        info.update(iterations=iterations, max_iter=int(max_iter), tol=float(tol), relative_residual=rel,
                    tolerance_met=bool(rel < tol or rel == 0.0))
    return x
