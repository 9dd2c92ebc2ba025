"""L1-wavelet compressed sensing: ``argmin_x 1/2 ||A x - y||^2 + lam_abs ||Psi x||_1`` by FISTA, as ``bart pics -l1``.

``Psi`` is the orthonormal periodic Daubechies transform of :mod:`mrlearn.recon.wavelets` (``db2`` by default,
BART's ``dau2``), applied to the image zero-padded (centred) to a size divisible by ``2 ** levels``; the padded
border is a free variable the data do not see, so the proximal step stays exact for any matrix size (230 x 180
included). With ``random_shift`` (default, as BART's cycle spinning) each iteration shifts the padded image by a
random offset in ``[0, 2 ** levels)`` per axis before the transform and back after it: a fixed dyadic grid
leaves blocky wavelet residue where the data are weak (background, the image border); shifting averages it
out. Shifts come from a generator seeded with ``seed``, so results repeat. All coefficients are thresholded (as
BART) unless ``threshold_coarse=False``.

``lam`` is relative, by ``lambda_convention`` (:mod:`mrlearn.recon.scaling`): ``"bart"`` (default) gives
``bart pics -l1 -r lam``'s weight, ``"max"`` ``lam * max|A^H y|``, ``"absolute"`` ``lam`` in data units. Step
``1 / L`` with ``L = max_x sum_c |S_c(x)|^2 >= ||A^H A||`` (1 for unit-norm maps). kspace/maps ``[B, C, H, W]``,
output complex ``[B, H, W]``.

Stopping: ``max_iter`` iterations (BART's practice: a fixed count), or earlier with ``tol > 0`` once the relative
change of the iterate ``||x_k - x_{k-1}|| / ||x_k||`` is below ``tol`` for every slice. ``info`` (optional dict)
receives ``iterations``, ``max_iter``, ``tol``, ``relative_change`` (the last, largest over the batch) and
``tolerance_met``: a result at ``max_iter`` with a large relative change is not the minimiser. A long solve prints
progress lines (``iteration i/max_iter``, the relative change; :mod:`mrlearn.progress`).
"""

from __future__ import annotations

import torch

from mrlearn.physics.complex import center_crop, center_pad
from mrlearn.physics.sense import sense_adjoint
from mrlearn.recon.inputs import check_kspace, check_mask, check_sens_maps
from mrlearn.physics.normal import SenseNormal
from mrlearn.progress import Ticker
from mrlearn.recon.scaling import lambda_weight
from mrlearn.recon.stopping import relative_change
from mrlearn.recon.wavelets import default_levels, detail_mask, dwt2, idwt2, pad_shape


def soft_threshold(x: torch.Tensor, thresh: torch.Tensor | float) -> torch.Tensor:
    """Complex soft-thresholding ``x * max(1 - t / |x|, 0)``."""
    mag = x.abs()
    return x * torch.clamp(1 - thresh / mag.clamp_min(1e-30), min=0)


def absolute_lambda(kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None,
                    lam: float, lambda_convention: str = "bart") -> torch.Tensor:
    """Absolute regularisation weight per sample ``[B]`` of relative ``lam`` (e.g. for ``bart pics -w 1 -r``)."""
    kspace = check_kspace(kspace)
    mask = check_mask(mask, kspace)
    maps = check_sens_maps(sens_maps, kspace)
    return lambda_weight(lam, lambda_convention, kspace, mask, sense_adjoint(kspace, maps, mask))


def cs_l1_wavelet(kspace: torch.Tensor, mask: torch.Tensor | None = None, sens_maps: torch.Tensor | None = None,
                  lam: float = 0.005, max_iter: int = 30, wavelet: str = "db2", levels: int | None = None,
                  lambda_convention: str = "bart", random_shift: bool = True, seed: int = 0,
                  threshold_coarse: bool = True, tol: float = 0.0, info: dict | None = None) -> torch.Tensor:
    """FISTA for L1-wavelet CS (module docstring); the defaults are those of ``bart pics -l1 -r 0.005``."""
    kspace = check_kspace(kspace)
    mask = check_mask(mask, kspace)
    maps = check_sens_maps(sens_maps, kspace)
    h, w = kspace.shape[-2:]
    levels = default_levels((h, w)) if levels is None else int(levels)
    ph, pw = pad_shape((h, w), levels)
    rhs = sense_adjoint(kspace, maps, mask)
    lam_abs = lambda_weight(lam, lambda_convention, kspace, mask, rhs)
    normal = SenseNormal(maps, mask)
    step = 1.0 / normal.lipschitz  # [B, 1, 1]
    thresh = lam_abs[:, None, None] * step
    if not threshold_coarse:
        thresh = thresh * detail_mask((ph, pw), levels, rhs.device)  # [B, H', W']
    gen = torch.Generator().manual_seed(int(seed))
    span = 2**levels

    def prox(z: torch.Tensor) -> torch.Tensor:
        if not random_shift:
            return idwt2(soft_threshold(dwt2(z, levels, wavelet), thresh), levels, wavelet)
        sh, sw = (int(v) for v in torch.randint(0, span, (2,), generator=gen))
        z = torch.roll(z, (sh, sw), dims=(-2, -1))
        z = idwt2(soft_threshold(dwt2(z, levels, wavelet), thresh), levels, wavelet)
        return torch.roll(z, (-sh, -sw), dims=(-2, -1))

    x = torch.zeros(rhs.shape[0], ph, pw, dtype=rhs.dtype, device=rhs.device)
    y, t = x, 1.0
    step_rhs = step * center_pad(rhs, (ph, pw))
    iterations, change = 0, float("inf")
    ticker = Ticker("CS (L1-wavelet FISTA)")
    for _ in range(int(max_iter)):
        # gradient step y - step (A^H A y - A^H y) on the padded grid; the border is not seen by the data
        z = y + step_rhs
        center_crop(z, (h, w)).sub_(step * normal(center_crop(y, (h, w))))
        x_new = prox(z)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = x_new + ((t - 1) / t_new) * (x_new - x)
        change = relative_change(x_new, x)
        x, t = x_new, t_new
        iterations += 1
        if tol > 0 and change < tol:
            break
        ticker.update("iteration", iterations, int(max_iter), [f"relative change {change:.2e}"], bound=tol > 0)
    if info is not None:
        info.update(iterations=iterations, max_iter=int(max_iter), tol=float(tol), relative_change=change,
                    tolerance_met=bool(tol > 0 and change < tol))
    return center_crop(x, (h, w))

