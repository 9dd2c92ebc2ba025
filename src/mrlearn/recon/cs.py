"""L1-wavelet compressed sensing: ``argmin_x 1/2 ||A x - y||^2 + lam ||Psi x||_1`` by FISTA.

``Psi`` is the orthonormal periodic Daubechies transform of :mod:`mrlearn.recon.wavelets` (``db4`` by default;
``db2`` is BART's ``dau2``), applied to the image zero-padded (centred) to a size divisible by ``2 ** levels``;
the padded border is a free variable the data do not see, so the proximal step stays exact for any matrix size
(230 x 180 included). All coefficients are thresholded (as BART) unless ``threshold_coarse=False``.

``lam`` is relative: the absolute weight is ``lam * max|A^H y|`` per sample, so it does not depend on the k-space
scaling (:func:`absolute_lambda` gives that number, e.g. for ``bart pics -l1 -r``). Step ``1 / L`` with
``L = max_x sum_c |S_c(x)|^2 >= ||A^H A||`` (1 for unit-norm maps). kspace/maps ``[B, C, H, W]``, output
complex ``[B, H, W]``.
"""

from __future__ import annotations

import torch

from mrlearn.physics.complex import center_crop, center_pad
from mrlearn.physics.sense import sense_adjoint, sense_normal
from mrlearn.recon.inputs import check_kspace, check_mask, check_sens_maps, max_sensitivity
from mrlearn.recon.wavelets import default_levels, detail_mask, dwt2, idwt2, pad_shape


def soft_threshold(x: torch.Tensor, thresh: torch.Tensor | float) -> torch.Tensor:
    """Complex soft-thresholding ``x * max(1 - t / |x|, 0)``."""
    mag = x.abs()
    return x * torch.clamp(1 - thresh / mag.clamp_min(1e-30), min=0)


def absolute_lambda(kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None,
                    lam: float) -> torch.Tensor:
    """Absolute regularisation weight per sample ``[B]``: ``lam * max|A^H y|``."""
    kspace = check_kspace(kspace)
    mask = check_mask(mask, kspace)
    maps = check_sens_maps(sens_maps, kspace)
    return lam * sense_adjoint(kspace, maps, mask).abs().amax(dim=(-2, -1))


def cs_l1_wavelet(kspace: torch.Tensor, mask: torch.Tensor | None = None, sens_maps: torch.Tensor | None = None,
                  lam: float = 0.005, max_iter: int = 100, wavelet: str = "db4", levels: int | None = None,
                  threshold_coarse: bool = True, absolute: bool = False) -> torch.Tensor:
    """FISTA for L1-wavelet CS; ``lam`` relative to ``max|A^H y|`` (or absolute with ``absolute=True``).

    ``threshold_coarse=True`` (default) thresholds every coefficient, as BART ``pics -l1`` does; False leaves the
    coarse approximation unpenalised.
    """
    kspace = check_kspace(kspace)
    mask = check_mask(mask, kspace)
    maps = check_sens_maps(sens_maps, kspace)
    h, w = kspace.shape[-2:]
    levels = default_levels((h, w)) if levels is None else int(levels)
    ph, pw = pad_shape((h, w), levels)
    rhs = sense_adjoint(kspace, maps, mask)
    lam_abs = lam * (torch.ones_like(rhs.real.amax(dim=(-2, -1))) if absolute else rhs.abs().amax(dim=(-2, -1)))
    step = 1.0 / max_sensitivity(maps)  # [B, 1, 1]
    thresh = (lam_abs[:, None, None] * step)
    where = torch.ones(ph, pw, device=rhs.device) if threshold_coarse else detail_mask((ph, pw), levels, rhs.device)
    thresh = thresh * where  # [B, H', W']

    def prox(z: torch.Tensor) -> torch.Tensor:
        return idwt2(soft_threshold(dwt2(z, levels, wavelet), thresh), levels, wavelet)

    x = torch.zeros(rhs.shape[0], ph, pw, dtype=rhs.dtype, device=rhs.device)
    y, t = x, 1.0
    rhs_pad = center_pad(rhs, (ph, pw))
    for _ in range(int(max_iter)):
        grad = center_pad(sense_normal(center_crop(y, (h, w)), maps, mask), (ph, pw)) - rhs_pad
        x_new = prox(y - step * grad)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = x_new + ((t - 1) / t_new) * (x_new - x)
        x, t = x_new, t_new
    return center_crop(x, (h, w))
