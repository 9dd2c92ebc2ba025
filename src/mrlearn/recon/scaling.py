"""Regularisation weights of CS and TV: what a relative ``lam`` means (``lambda_convention``).

The solvers minimise ``1/2 ||A x - y||^2 + lam_abs R(x)`` on the data as given; ``lam_abs`` per slice is

* ``"bart"`` (default): ``lam * s`` with ``s`` the data scale ``bart pics`` divides the k-space by before solving
  (:func:`bart_scale`), so ``lam`` means what ``bart pics -r lam`` means and the same ``lam`` gives BART's image
  (in data units: ``bart pics -S``);
* ``"max"``: ``lam * max|A^H y|`` (the peak of the SENSE-combined zero-filled image);
* ``"absolute"``: ``lam`` itself (data units).

The first two are scale-free: k-space times ``a`` gives the image times ``a``.

BART's scale (``estimate_scaling`` of BART's ``calib/estvar``/``sense/optcom``): the calibration region (the fully
sampled centre box, at most 32 x 32) is inverse-Fourier transformed on its own (unitary on the small grid),
combined by root-sum-of-squares over coils and divided by ``sqrt(H W / (h w))`` to the full grid's units; of
those magnitudes, with ``median``, ``p90`` (the value at index ``floor(0.9 n)`` of the sorted list) and ``max``,
``s = p90`` when ``max - p90 < 2 (p90 - median)``, else ``max``.
"""

from __future__ import annotations

import torch

from mrlearn.errors import input_error
from mrlearn.physics.calibration import box_shape, calibration_box, sampling_pattern
from mrlearn.physics.fft import ifft2c

LAMBDA_CONVENTIONS = ("bart", "max", "absolute")


def _robust_scale(values: torch.Tensor) -> torch.Tensor:
    v, _ = torch.sort(values.flatten())
    n = v.numel()
    median, p90, vmax = v[n // 2], v[int(n * 0.9)], v[-1]
    return p90 if bool(vmax - p90 < 2 * (p90 - median)) else vmax


def bart_scale(kspace: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-slice data scale ``[B]`` as ``bart pics`` estimates it (module docstring); kspace ``[B, C, H, W]``.

    Without a calibration box (centre not sampled) the whole zero-filled RSS image is used instead.
    """
    b, _, h, w = kspace.shape
    out = []
    for i in range(b):
        k = kspace[i]
        rows, cols = calibration_box(sampling_pattern(k, None if mask is None else mask[min(i, mask.shape[0] - 1)]
                                                      if mask.ndim == 4 else mask), 32)
        bh, bw = box_shape((rows, cols))
        if bh * bw == 0:
            rows, cols, bh, bw = slice(0, h), slice(0, w), h, w
        img = ifft2c(k[:, rows, cols])
        rss = torch.sqrt((img.abs() ** 2).sum(dim=0)) / ((h * w) / (bh * bw)) ** 0.5
        out.append(_robust_scale(rss))
    return torch.stack(out).to(kspace.real.dtype)


def lambda_weight(lam: float, convention: str, kspace: torch.Tensor, mask: torch.Tensor | None,
                  adjoint: torch.Tensor) -> torch.Tensor:
    """Absolute weight ``[B]`` of relative ``lam`` under ``convention``; ``adjoint`` is ``A^H y`` ``[B, H, W]``."""
    if convention == "bart":
        scale = bart_scale(kspace, mask)
    elif convention == "max":
        scale = adjoint.abs().amax(dim=(-2, -1))
    elif convention == "absolute":
        scale = torch.ones(adjoint.shape[0], dtype=adjoint.real.dtype, device=adjoint.device)
    else:
        raise input_error("lambda_convention", f"unknown value {convention!r}",
                          f"choose one of: {', '.join(LAMBDA_CONVENTIONS)}")
    return float(lam) * scale.to(adjoint.real.dtype)
