"""The SENSE normal operator ``A^H A`` for fixed maps and mask, in the form iterative solvers and unrolled networks use.

``A = M F_c S`` with the centred orthonormal FFT ``F_c = fftshift . F . ifftshift``. ``F_c^H M F_c`` is a circular
convolution, which commutes with the (inverse) shifts, so ``F_c^H M F_c = F^H M_u F`` with
``M_u = ifftshift(M)``: no shifts per iteration. A column mask (``[..., 1, W]``, constant along H) needs only the
1-D FFT along W (``F_H^H F_H = I``); no mask gives ``sum_c |S_c|^2 x``. Shapes: image ``[B, H, W]``, maps
``[B, C, H, W]`` or None (single-coil: one coil, map of ones), mask broadcastable to ``[B, C, H, W]`` (real 0/1) or
None. Equal to ``sense_adjoint(sense_forward(x))`` of :mod:`mrlearn.physics.sense` to float rounding (tested).
"""

from __future__ import annotations

import torch


class SenseNormal:
    """Callable ``x [B, H, W] -> A^H A x [B, H, W]``; ``lipschitz`` is ``max_x sum_c |S_c(x)|^2`` ``[B, 1, 1]``.

    Speed (the solvers call it once or more per iteration): the conjugate maps are materialised once (a lazy
    ``conj()`` product takes a slow path), the FFT pair is unnormalised forward / ``1/N`` inverse (one scaling
    pass, equal to the orthonormal pair), and without autograd the coil-sized intermediates live in two buffers
    reused across calls (fresh multi-megabyte allocations cost page faults on every call). The returned image is
    a new tensor.
    """

    def __init__(self, sens_maps: torch.Tensor | None, mask: torch.Tensor | None):
        self.maps = sens_maps
        self.maps_conj = None if sens_maps is None else sens_maps.conj().resolve_conj()
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        if mask is None:
            self.kind, self.mask = "none", None
            return
        real = torch.float32 if sens_maps is None else sens_maps.real.dtype
        mask = mask.to(real)
        if mask.ndim < 2 or mask.shape[-2] == 1:
            self.kind, self.mask = "columns", torch.fft.ifftshift(mask, dim=-1)
        else:
            self.kind, self.mask = "2d", torch.fft.ifftshift(mask, dim=(-2, -1))

    @property
    def lipschitz(self) -> torch.Tensor:
        """``max_x sum_c |S_c(x)|^2`` per slice ``[B, 1, 1]`` (1 without maps): a bound on ``||A^H A||``."""
        if self.maps is None:
            return torch.ones(1, 1, 1, device=None if self.mask is None else self.mask.device)
        return (self.maps.abs() ** 2).sum(dim=1).amax(dim=(-2, -1)).clamp_min(1e-30)[:, None, None]

    def _functional(self, x: torch.Tensor) -> torch.Tensor:
        coil = x.unsqueeze(-3) if self.maps is None else self.maps * x.unsqueeze(-3)
        if self.kind == "columns":
            coil = torch.fft.ifft(self.mask * torch.fft.fft(coil, dim=-1), dim=-1)
        elif self.kind == "2d":
            coil = torch.fft.ifft2(self.mask * torch.fft.fft2(coil))
        return coil.squeeze(-3) if self.maps is None else (self.maps_conj * coil).sum(dim=-3)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.maps is None or (torch.is_grad_enabled() and (x.requires_grad or self.maps.requires_grad)):
            return self._functional(x)
        if self._buffers is None or self._buffers[0].shape != self.maps.shape or self._buffers[0].dtype != x.dtype:
            self._buffers = (torch.empty_like(self.maps, dtype=x.dtype), torch.empty_like(self.maps, dtype=x.dtype))
        coil, spec = self._buffers
        if x.shape[0] != coil.shape[0] or x.device != coil.device:
            return self._functional(x)
        torch.mul(self.maps, x.unsqueeze(-3), out=coil)
        if self.kind == "columns":
            torch.fft.fft(coil, dim=-1, out=spec)
            spec.mul_(self.mask)
            torch.fft.ifft(spec, dim=-1, out=coil)
        elif self.kind == "2d":
            torch.fft.fft2(coil, out=spec)
            spec.mul_(self.mask)
            torch.fft.ifft2(spec, out=coil)
        coil.mul_(self.maps_conj)
        return coil.sum(dim=-3)
