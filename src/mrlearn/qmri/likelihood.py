"""Objectives for voxel-wise fits: the Rician negative log-likelihood and the least-squares cost.

Convention: measurements ``meas`` and model signals ``pred`` are ``[..., N]`` magnitudes; ``sigma`` is the
standard deviation of the Gaussian noise on each real/imaginary channel (a float or a tensor broadcastable to
``[...]``). Objectives are summed over the last axis and return ``[...]``.
"""

from __future__ import annotations

import torch


def log_i0(x: torch.Tensor) -> torch.Tensor:
    """log I0(x), stable for large |x|: log(i0e(|x|)) + |x| (i0e is the exponentially scaled Bessel I0)."""
    ax = x.abs()
    return torch.log(torch.special.i0e(ax)) + ax


def bessel_ratio(x: torch.Tensor) -> torch.Tensor:
    """I1(x) / I0(x) for x >= 0, computed from the scaled functions (no overflow)."""
    return torch.special.i1e(x) / torch.special.i0e(x)


def _sigma2(sigma: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if s.ndim > 0:
        s = s[..., None]
    return s * s


def rician_nll(meas: torch.Tensor, pred: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Rician negative log-likelihood summed over the last axis.

    -log p(m | s, sigma) = log sigma^2 - log m + (m^2 + s^2) / (2 sigma^2) - log I0(m s / sigma^2).
    Measurements m <= 0 (impossible under Rician noise) are clamped to 1e-30 in the log m term only, which
    does not depend on the parameters.
    """
    s2 = _sigma2(sigma, meas)
    terms = (torch.log(s2) - torch.log(meas.clamp_min(1e-30)) + (meas * meas + pred * pred) / (2 * s2)
             - log_i0(meas * pred / s2))
    return terms.sum(-1)


def rician_grad_curv(meas: torch.Tensor, pred: torch.Tensor, sigma: float | torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """First and second derivative of each Rician NLL term with respect to the model signal ``pred``.

    d/ds = (s - m R(x)) / sigma^2 and d2/ds2 = 1/sigma^2 - (m / sigma^2)^2 R'(x), with x = m s / sigma^2,
    R = I1/I0 and R'(x) = 1 - R/x - R^2 (-> 1/2 at x = 0).
    """
    s2 = _sigma2(sigma, meas)
    x = (meas * pred / s2).clamp_min(0)
    r = bessel_ratio(x)
    small = x < 1e-6
    dr = torch.where(small, torch.full_like(x, 0.5), 1 - r / torch.where(small, torch.ones_like(x), x) - r * r)
    grad = (pred - meas * r) / s2
    curv = 1 / s2 - (meas / s2) ** 2 * dr
    return grad, curv


def sse(meas: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Least-squares cost 0.5 * sum (m - s)^2 over the last axis."""
    r = pred - meas
    return 0.5 * (r * r).sum(-1)
