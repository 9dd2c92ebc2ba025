"""CG-SENSE with Tikhonov regularisation: ``argmin_x ||A x - y||^2 + lam ||x||^2``.

Solved by conjugate gradient on the normal equations ``(A^H A + lam I) x = A^H y`` (as BART ``pics -l2 -r lam``).
``A = M F S``; kspace ``[B, C, H, W]``, maps ``[B, C, H, W]`` (unit norm over coils, e.g. ESPIRiT), output complex
``[B, H, W]``. ``lam`` is dimensionless (both terms scale with the data squared), so it does not depend on the
k-space scaling.
"""

from __future__ import annotations

import torch

from mrlearn.physics.sense import sense_adjoint
from mrlearn.recon.cg import conjugate_gradient
from mrlearn.recon.inputs import check_kspace, check_mask, check_sens_maps
from mrlearn.physics.normal import SenseNormal
from mrlearn.progress import Ticker


def cg_sense(kspace: torch.Tensor, mask: torch.Tensor | None = None, sens_maps: torch.Tensor | None = None,
             lam: float = 0.01, max_iter: int = 300, tol: float = 1e-6, x0: torch.Tensor | None = None,
             info: dict | None = None) -> torch.Tensor:
    """CG-SENSE image ``[B, H, W]``: CG until ``||r|| / ||A^H y|| < tol``, ``max_iter`` a safety cap (``info``: see
    :func:`mrlearn.recon.cg.conjugate_gradient`; a long solve prints progress lines, :mod:`mrlearn.progress`)."""
    kspace = check_kspace(kspace)
    mask = check_mask(mask, kspace)
    maps = check_sens_maps(sens_maps, kspace)
    rhs = sense_adjoint(kspace, maps, mask)
    sense_normal = SenseNormal(maps, mask)

    def normal(x: torch.Tensor) -> torch.Tensor:
        return sense_normal(x) + lam * x

    return conjugate_gradient(normal, rhs, x0=x0, max_iter=max_iter, tol=tol, info=info, ticker=Ticker("CG-SENSE"))
