"""Self-supervised losses with guarded normalisations (no NaN from empty Lambda or zero norms).

SSDU k-space loss (Yaman et al. 2020), per sample, on the Lambda locations only::

    L(u, v) = ||u - v||_2 / ||u||_2 + ||u - v||_1 / ||u||_1,   u = Lambda y (acquired), v = Lambda A x (predicted)

with ``||.||_1`` the sum of complex magnitudes and ``||.||_2`` the Euclidean norm over coils and k-space. The loss
is invariant to the k-space scale. A sample whose ``||u||`` is zero (empty Lambda, or Lambda falling on all-zero
k-space rows) has no defined loss: it is marked invalid and contributes exactly 0 (gradients stay finite);
the batch loss is the mean over valid samples (0 with ``valid.sum() == 0``; the caller decides whether that
is an error). Denominators are floored at ``tiny`` so nothing divides by zero.

Relative image loss (self-distillation): ``||s - t||_2 / ||t||_2`` per sample, guarded the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


_TINY = 1e-30


@dataclass
class LossResult:
    """``loss`` (scalar, mean over valid samples), ``per_sample`` ``[B]`` (0 where invalid), ``valid`` ``[B]`` bool."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    valid: torch.Tensor


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _safe_ratio(num: torch.Tensor, den: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    den = torch.where(valid, den, torch.ones_like(den))  # the unused branch must not produce inf/NaN gradients
    return torch.where(valid, num / den, torch.zeros_like(num))


def _reduce(per_sample: torch.Tensor, valid: torch.Tensor) -> LossResult:
    n = valid.sum()
    loss = torch.where(n > 0, per_sample.sum() / n.clamp_min(1), per_sample.sum() * 0.0)
    return LossResult(loss, per_sample, valid)


def ssdu_loss(pred_kspace: torch.Tensor, kspace: torch.Tensor, lam: torch.Tensor,
              l1_weight: float = 1.0, l2_weight: float = 1.0) -> LossResult:
    """Normalised l1 + l2 loss on Lambda. ``pred_kspace``/``kspace`` ``[B, C, H, W]`` complex, ``lam`` broadcastable.

    ``kspace`` is the acquired (masked) k-space; both are masked with ``lam`` here.
    """
    m = lam.to(kspace.real.dtype)
    u = _flat(kspace * m)
    diff = _flat((pred_kspace - kspace) * m)
    u_abs = u.abs()
    u2, u1 = u_abs.pow(2).sum(-1).sqrt(), u_abs.sum(-1)
    valid = (u2 > 0) & torch.isfinite(u2)
    d2 = (diff.real.pow(2) + diff.imag.pow(2)).sum(-1).clamp_min(_TINY).sqrt()  # sqrt'(0) is inf: keep it off 0
    d1 = diff.abs().sum(-1)  # d|z|/dz uses sgn(z), 0 at z = 0
    per = l2_weight * _safe_ratio(d2, u2, valid) + l1_weight * _safe_ratio(d1, u1, valid)
    return _reduce(per, valid)


def relative_l2(output: torch.Tensor, reference: torch.Tensor) -> LossResult:
    """``||output - reference||_2 / ||reference||_2`` per sample (complex or real ``[B, ...]``); zero references invalid."""
    ref = _flat(reference)
    diff = _flat(output - reference)
    r2 = ref.abs().pow(2).sum(-1).sqrt()
    valid = (r2 > 0) & torch.isfinite(r2)
    d2 = (diff.abs().pow(2) if not diff.is_complex() else diff.real.pow(2) + diff.imag.pow(2)).sum(-1).clamp_min(_TINY).sqrt()
    return _reduce(_safe_ratio(d2, r2, valid), valid)


def energy_ratio(output: torch.Tensor, zero_filled: torch.Tensor) -> torch.Tensor:
    """Collapse monitor ``||output||^2 / ||zero_filled||^2`` per sample ``[B]`` (NaN where the zero-filled is 0).

    About 1 for a sensible reconstruction (more with restored k-space energy), near 0 for a collapsed one.
    """
    out = _flat(output.detach()).abs().pow(2).sum(-1)
    ref = _flat(zero_filled.detach()).abs().pow(2).sum(-1)
    return torch.where(ref > 0, out / ref.clamp_min(torch.finfo(ref.dtype).tiny), torch.full_like(ref, float("nan")))
