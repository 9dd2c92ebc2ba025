"""One entry point for the classical reconstructions, registered under kind ``"recon"``.

``reconstruct(method, kspace [B, C, H, W], mask, sens_maps=None, **options)`` returns ``[B, H, W]``: a real
magnitude for ``zero-filled`` (RSS), complex images for the others. Multi-coil methods need ``sens_maps``
(``[B, C, H, W]``); :func:`reconstruct_volume` estimates them by ESPIRiT when they are not given.

Registry (kind ``"recon"``, as ``mrlearn.training.inference.classical_predictor`` uses it): each name is a factory
taking the method's keyword options and returning a per-slice callable ``predict(sample) -> magnitude [h, w]``
(``sample``: dict with ``kspace [C, H, W]``, ``mask``, optional ``sens_maps`` and ``recon_size``), e.g.
``registry.build("recon", {"name": "cg-sense", "lam": 0.01}, "--method")(sample)``.
Defaults are scale-free: ``cg-sense`` ``lam`` is dimensionless; ``cs-l1`` and ``tv`` ``lam`` are relative to
``max|A^H y|``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from mrlearn.errors import input_error
from mrlearn.physics.complex import crop_or_pad
from mrlearn.physics.espirit import espirit_sens_maps
from mrlearn.recon.cg_sense import cg_sense
from mrlearn.recon.cs import cs_l1_wavelet
from mrlearn.recon.inputs import check_kspace, check_mask
from mrlearn.recon.tv import tv_recon
from mrlearn.recon.zero_filled import sense_zero_filled, zero_filled_rss

from mrlearn.registry import register


def zero_filled_method(kspace: torch.Tensor, mask: torch.Tensor | None = None,
                       sens_maps: torch.Tensor | None = None) -> torch.Tensor:
    """RSS of the zero-filled coil images (maps unused)."""
    return zero_filled_rss(kspace, mask)


def sense_method(kspace: torch.Tensor, mask: torch.Tensor | None = None,
                 sens_maps: torch.Tensor | None = None) -> torch.Tensor:
    """SENSE-combined zero-filled image ``A^H y``."""
    return sense_zero_filled(kspace, mask, sens_maps)


def cg_sense_method(kspace: torch.Tensor, mask: torch.Tensor | None = None, sens_maps: torch.Tensor | None = None,
                    lam: float = 0.01, max_iter: int = 30, tol: float = 1e-6) -> torch.Tensor:
    """CG-SENSE with Tikhonov ``lam ||x||^2`` (dimensionless ``lam``)."""
    return cg_sense(kspace, mask, sens_maps, lam=lam, max_iter=max_iter, tol=tol)


def cs_l1_method(kspace: torch.Tensor, mask: torch.Tensor | None = None, sens_maps: torch.Tensor | None = None,
                 lam: float = 0.005, max_iter: int = 100, wavelet: str = "db4") -> torch.Tensor:
    """L1-wavelet CS (FISTA), ``lam`` relative to ``max|A^H y|``."""
    return cs_l1_wavelet(kspace, mask, sens_maps, lam=lam, max_iter=max_iter, wavelet=wavelet)


def tv_method(kspace: torch.Tensor, mask: torch.Tensor | None = None, sens_maps: torch.Tensor | None = None,
              lam: float = 0.002, max_iter: int = 30, cg_iter: int = 10, rho: float = 0.5,
              anisotropic: bool = False) -> torch.Tensor:
    """TV (ADMM; isotropic unless ``anisotropic``), ``lam`` relative to ``max|A^H y|``."""
    return tv_recon(kspace, mask, sens_maps, lam=lam, max_iter=max_iter, cg_iter=cg_iter, rho=rho,
                    anisotropic=anisotropic)


#: method name -> function; the names ``mrlearn reconstruct --method`` accepts.
METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "zero-filled": zero_filled_method,
    "sense": sense_method,
    "cg-sense": cg_sense_method,
    "cs-l1": cs_l1_method,
    "tv": tv_method,
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
#: methods that use sensitivity maps (all but the RSS)
NEEDS_MAPS: frozenset[str] = frozenset(METHOD_NAMES) - {"zero-filled"}


def _method(method: str, where: str = "method") -> Callable[..., torch.Tensor]:
    if method not in METHODS:
        raise input_error(where, f"unknown reconstruction method {method!r}", f"choose one of: {', '.join(METHODS)}")
    return METHODS[method]


def reconstruct(method: str, kspace: torch.Tensor, mask: torch.Tensor | None,
                sens_maps: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
    """Run ``method`` on kspace ``[B, C, H, W]``; returns ``[B, H, W]`` (real for zero-filled, else complex)."""
    fn = _method(method)
    try:
        return fn(kspace, mask, sens_maps, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise input_error(f"{method} options", str(exc), "see mrlearn.recon.methods for the valid options") from None
        raise


def reconstruct_volume(method: str, kspace: Any, mask: Any = None, sens_maps: Any = None,
                       recon_size: tuple[int, int] | None = (320, 320), batch_size: int = 4,
                       device: str | torch.device | None = None, espirit: dict[str, Any] | None = None,
                       **options: Any) -> Any:
    """Reconstruct a volume slice-batch by slice-batch; returns magnitudes ``[S, h, w]`` (float32).

    ``kspace`` ``[S, C, H, W]`` complex (numpy or torch; numpy in -> numpy out); ``mask`` broadcastable to it
    (``[W]``, ``[S, 1, 1, W]``, ...; applied again, so masked input is fine); ``sens_maps`` ``[S, C, H, W]`` or
    None: estimated per slice by ESPIRiT (``espirit`` = its keyword options) for the methods that need maps, or
    ones for single-coil data. ``recon_size`` centre-crops (or pads) the image, None keeps ``H x W``.
    """
    as_numpy = isinstance(kspace, np.ndarray)
    ksp = check_kspace(torch.as_tensor(kspace), "kspace")
    if device is not None:
        ksp = ksp.to(device)
    ksp = ksp.to(torch.complex64)
    _method(method)
    msk = check_mask(None if mask is None else torch.as_tensor(mask), ksp)
    maps_all = None
    if sens_maps is not None:
        maps_all = torch.as_tensor(sens_maps).to(device=ksp.device, dtype=torch.complex64)
        if maps_all.ndim == 3:
            maps_all = maps_all.unsqueeze(0)
        if maps_all.ndim != 4 or tuple(maps_all.shape) not in (tuple(ksp.shape), (1, *ksp.shape[1:])):
            raise input_error("sens_maps", f"shape {tuple(maps_all.shape)} does not match k-space {tuple(ksp.shape)}",
                              "pass maps of the k-space shape [S, C, H, W]")
    out = []
    for s0 in range(0, ksp.shape[0], max(1, int(batch_size))):
        k = ksp[s0 : s0 + batch_size]
        m = None if msk is None else (msk[s0 : s0 + batch_size] if msk.shape[0] > 1 else msk)
        k = k if m is None else k * m + 0.0
        maps = None
        if method in NEEDS_MAPS:
            if maps_all is not None:
                maps = maps_all[s0 : s0 + batch_size] if maps_all.shape[0] > 1 else maps_all
            elif k.shape[1] > 1:
                maps = espirit_sens_maps(k, **(espirit or {}))
        img = reconstruct(method, k, m, maps, **options).abs()
        if recon_size is not None:
            img = crop_or_pad(img, tuple(recon_size))
        out.append(img.to(torch.float32))
    result = torch.cat(out, dim=0)
    return result.cpu().numpy() if as_numpy else result


class SliceRecon:
    """Per-slice callable for the CLI: ``predict(sample) -> float32 magnitude [h, w]`` (ESPIRiT maps if none)."""

    def __init__(self, method: str, options: dict[str, Any]):
        self.method, self.options = method, options

    def __call__(self, sample: dict[str, Any]) -> torch.Tensor:
        ksp = torch.as_tensor(sample["kspace"])
        mask = sample.get("mask")
        if mask is not None:
            mask = torch.as_tensor(mask)
            mask = mask.reshape(1, 1, 1, -1) if mask.numel() == ksp.shape[-1] else mask.reshape(1, *mask.shape[-3:])
        maps = sample.get("sens_maps")
        maps = None if maps is None else torch.as_tensor(maps)[None]
        size = sample.get("recon_size")
        out = reconstruct_volume(self.method, ksp[None], mask, maps, recon_size=None if size is None else tuple(size),
                                 **self.options)
        return out[0]


@register("recon", "zero-filled")
def zero_filled_factory() -> SliceRecon:
    """Zero-filled RSS."""
    return SliceRecon("zero-filled", {})


@register("recon", "sense")
def sense_factory() -> SliceRecon:
    """SENSE-combined zero-filled image (ESPIRiT maps unless the sample has maps)."""
    return SliceRecon("sense", {})


@register("recon", "cg-sense")
def cg_sense_factory(lam: float = 0.01, max_iter: int = 30, tol: float = 1e-6) -> SliceRecon:
    """CG-SENSE with Tikhonov ``lam`` (dimensionless)."""
    return SliceRecon("cg-sense", {"lam": lam, "max_iter": max_iter, "tol": tol})


@register("recon", "cs-l1")
def cs_l1_factory(lam: float = 0.005, max_iter: int = 100, wavelet: str = "db4") -> SliceRecon:
    """L1-wavelet CS, ``lam`` relative to ``max|A^H y|``."""
    return SliceRecon("cs-l1", {"lam": lam, "max_iter": max_iter, "wavelet": wavelet})


@register("recon", "tv")
def tv_factory(lam: float = 0.002, max_iter: int = 30, cg_iter: int = 10, rho: float = 0.5,
               anisotropic: bool = False) -> SliceRecon:
    """TV (ADMM; isotropic unless ``anisotropic``, BART ``-R T:1:0 -R T:2:0``), ``lam`` relative to ``max|A^H y|``."""
    return SliceRecon("tv", {"lam": lam, "max_iter": max_iter, "cg_iter": cg_iter, "rho": rho,
                             "anisotropic": bool(anisotropic)})
