"""The SENSE normal operator ``A^H A`` for fixed maps and mask, in the form the iterative solvers use.

``A = M F_c S`` with the centred orthonormal FFT ``F_c = fftshift . F . ifftshift``. ``F_c^H M F_c`` is a circular
convolution, which commutes with the (inverse) shifts, so ``F_c^H M F_c = F^H M_u F`` with
``M_u = ifftshift(M)``: no shifts per iteration. A column mask (``[..., 1, W]``, constant along H) needs only the
1-D FFT along W (``F_H^H F_H = I``); no mask gives ``sum_c |S_c|^2 x``. Shapes: image ``[B, H, W]``, maps
``[B, C, H, W]``, mask broadcastable to ``[B, C, H, W]`` (real 0/1) or None. Equal to
:func:`mrlearn.physics.sense.sense_normal` to float rounding (tested).
"""

from __future__ import annotations

import torch


class SenseNormal:
    """Callable ``x [B, H, W] -> A^H A x [B, H, W]``; ``lipschitz`` is ``max_x sum_c |S_c(x)|^2`` ``[B, 1, 1]``."""

    def __init__(self, sens_maps: torch.Tensor, mask: torch.Tensor | None):
        self.maps = sens_maps
        self.lipschitz = (sens_maps.abs() ** 2).sum(dim=1).amax(dim=(-2, -1)).clamp_min(1e-30)[:, None, None]
        if mask is None:
            self.kind, self.mask = "none", None
        elif mask.shape[-2] == 1:
            self.kind = "columns"
            self.mask = torch.fft.ifftshift(mask.to(sens_maps.real.dtype), dim=-1)
        else:
            self.kind = "2d"
            self.mask = torch.fft.ifftshift(mask.to(sens_maps.real.dtype), dim=(-2, -1))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        coil = self.maps * x.unsqueeze(-3)
        if self.kind == "none":
            return (self.maps.conj() * coil).sum(dim=-3)
        if self.kind == "columns":
            coil = torch.fft.ifft(self.mask * torch.fft.fft(coil, dim=-1, norm="ortho"), dim=-1, norm="ortho")
        else:
            coil = torch.fft.ifft2(self.mask * torch.fft.fft2(coil, norm="ortho"), norm="ortho")
        return (self.maps.conj() * coil).sum(dim=-3)
