"""The classical reconstruction methods, registered under registry kind ``"recon"`` by their canonical names.

Each entry is the solver itself: ``fn(kspace [B, C, H, W], mask, sens_maps, **options) -> [B, H, W]`` (a real
magnitude for ``zero-filled``, complex images for the others); its keyword defaults are the method's defaults,
written only there (:func:`method_options` reads them). Names: ``zero-filled`` (RSS of the zero-filled coil
images), ``sense`` (``A^H y``), ``cg-sense`` (Tikhonov, CG), ``cs-l1`` (L1-wavelet, FISTA), ``tv`` (ADMM).
Every method but ``zero-filled`` needs sensitivity maps (:data:`NEEDS_MAPS`); :func:`mrlearn.recon.reconstruct`
estimates them by ESPIRiT when none are given.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from mrlearn import registry
from mrlearn.recon.cg_sense import cg_sense
from mrlearn.recon.cs import cs_l1_wavelet
from mrlearn.recon.tv import tv_recon
from mrlearn.recon.zero_filled import sense_zero_filled, zero_filled_rss

#: arguments every solver takes from the data, not from options
DATA_ARGS = ("kspace", "mask", "sens_maps")
#: arguments the driver passes at run time, never options: the data and ``info`` (the solver's stopping record)
RUNTIME_ARGS = (*DATA_ARGS, "info")


def zero_filled(kspace: torch.Tensor, mask: torch.Tensor | None = None,
                sens_maps: torch.Tensor | None = None) -> torch.Tensor:
    """RSS of the zero-filled coil images, real ``[B, H, W]`` (maps unused)."""
    return zero_filled_rss(kspace, mask)


#: canonical method name -> solver (the same objects the registry holds)
METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "zero-filled": zero_filled,
    "sense": sense_zero_filled,
    "cg-sense": cg_sense,
    "cs-l1": cs_l1_wavelet,
    "tv": tv_recon,
}
for _name, _fn in METHODS.items():
    registry.register("recon", _name)(_fn)

METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
#: methods that use sensitivity maps (all but the RSS)
NEEDS_MAPS: frozenset[str] = frozenset(METHOD_NAMES) - {"zero-filled"}


def solver(method: str, where: str = "method") -> Callable[..., torch.Tensor]:
    """The registered solver of ``method`` (a one-line error listing the names when unknown)."""
    return registry.lookup("recon", method, where)


def method_options(method: str) -> dict[str, Any]:
    """``{option: default}`` of ``method`` (its solver's keyword arguments beyond the data)."""
    params = registry.config_params(solver(method), runtime=RUNTIME_ARGS)
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
