"""One call for every classical reconstruction: :func:`reconstruct` (numpy or torch, one slice or a volume).

Inputs: ``kspace`` ``[C, H, W]`` (one slice) or ``[S, C, H, W]`` (a volume), complex, centred; ``mask`` None, ``[W]``,
``[H, W]``, ``[S, H, W]``, ``[S, 1, 1, W]``, ... (real 0/1); None takes the sampling pattern from the data (where
any coil is non-zero: real undersampled data carry zeros there). ``sens_maps`` like ``kspace`` or None: ESPIRiT
from the data's own calibration box for the methods that need maps (ones for single-coil data).
Output: float32 magnitude ``[H, W]`` / ``[S, H, W]`` in data units (numpy in -> numpy out), at the k-space matrix
size unless ``recon_size=(h, w)`` centre-crops (or pads) it.

Options (``**options``) are checked by name: the method's own (its solver's keyword arguments, e.g. ``lam``,
``max_iter``), the ESPIRiT ones (:data:`MAP_OPTIONS`: ``calib_size``, ``kernel_size``, ``threshold``, ``crop``,
``eig_method``) and the driver's (:data:`DRIVER_OPTIONS`). An unknown key is a one-line error listing the valid
ones (:func:`valid_options`).

Map support check: ESPIRiT zeroes maps where the eigenvalue is below ``crop``; when that support keeps less than
``min_support_energy`` (default 0.5) of the zero-filled image's energy in a slice, the maps would silently black
out most of the image (small calibration boxes, strong undersampling), so the maps are recomputed without crop and
a warning says so.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import numpy as np
import torch

from mrlearn.data.checks import check_binary_mask, check_kspace, check_matrix, check_recon_size
from mrlearn.devices import resolve_device
from mrlearn.errors import input_error
from mrlearn.physics.complex import crop_or_pad
from mrlearn.physics.espirit import espirit_sens_maps
from mrlearn.physics.fft import ifft2c
from mrlearn.physics.sense import rss
from mrlearn.recon.methods import NEEDS_MAPS, RUNTIME_ARGS, solver

#: ESPIRiT options :func:`reconstruct` passes on to :func:`mrlearn.physics.espirit.espirit_sens_maps`
MAP_OPTIONS: tuple[str, ...] = ("calib_size", "kernel_size", "threshold", "crop", "eig_method")
#: options of the driver itself
DRIVER_OPTIONS: tuple[str, ...] = ("recon_size", "batch_size", "device", "min_support_energy")


def valid_options(method: str) -> list[str]:
    """Every option key :func:`reconstruct` accepts for ``method``, sorted."""
    from mrlearn.registry import config_params

    own = config_params(solver(method), runtime=RUNTIME_ARGS)
    extra = MAP_OPTIONS if method in NEEDS_MAPS else ()
    return sorted({*own, *extra, *DRIVER_OPTIONS})


#: option -> (lowest, highest, integer?, example): values outside are one-line errors (CLI --set and API alike)
OPTION_RANGES: dict[str, tuple[float, float, bool, str]] = {
    "lam": (0.0, 1e6, False, "0.01"), "tol": (0.0, 1.0, False, "1e-4"), "max_iter": (1, 100_000, True, "100"),
    "cg_iter": (1, 10_000, True, "10"), "rho": (1e-12, 1e6, False, "1.0"), "levels": (1, 16, True, "4"),
    "threshold_coarse": (0.0, 1e6, False, "0.0"), "batch_size": (1, 100_000, True, "4"),
    "min_support_energy": (0.0, 1.0, False, "0.5"), "calib_size": (4, 4096, True, "24"),
    "kernel_size": (2, 64, True, "6"), "threshold": (0.0, 1.0, False, "0.001"), "crop": (0.0, 1.0, False, "0.8"),
}


def check_option_ranges(options: dict[str, Any], where: str = "options") -> None:
    """Refuse option values outside :data:`OPTION_RANGES` (NaN, negative ``lam``, ``max_iter`` 0, ...)."""
    for key, value in options.items():
        if key not in OPTION_RANGES or isinstance(value, (list, tuple)):
            continue
        lo, hi, integer, example = OPTION_RANGES[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not lo <= value <= hi or (integer and int(value) != value):
            kind = "an integer" if integer else "a number"
            raise input_error(f"{where}.{key}", f"{value!r} is not {kind} in [{lo:g}, {hi:g}]", f"e.g. {key}={example}")


def split_options(method: str, options: dict[str, Any], where: str = "options"
                  ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(method options, ESPIRiT options, driver options)``; unknown keys, wrong types and values out of range
    (:data:`OPTION_RANGES`) are one-line errors."""
    from mrlearn.registry import validate

    valid = valid_options(method)
    for key in options:
        if key not in valid:
            raise input_error(f"{where}.{key}", f"unknown option for method {method!r}",
                              f"valid keys: {', '.join(valid)}")
    check_option_ranges(options, where)
    own = {k: v for k, v in options.items() if k not in MAP_OPTIONS and k not in DRIVER_OPTIONS}
    own = validate("recon", {"name": method, **own}, where, runtime=RUNTIME_ARGS)
    maps = {k: v for k, v in options.items() if k in MAP_OPTIONS}
    defaults = inspect.signature(espirit_sens_maps).parameters
    for key, value in maps.items():
        default = defaults[key].default
        if isinstance(default, (int, float)) and not isinstance(default, bool) and not isinstance(value, (int, float, list, tuple)):
            raise input_error(f"{where}.{key}", f"expected a number, got {value!r}", f"e.g. {key}={default}")
    driver = {k: v for k, v in options.items() if k in DRIVER_OPTIONS}
    return own, maps, driver


def _as_mask(mask: Any, kshape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    """A float32 mask ``[S|1, 1, H|1, W]`` for k-space ``[S, C, H, W]``."""
    if mask is None:
        return None
    m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask, device=device)
    if m.is_complex():
        raise input_error("mask", "the mask must be real (0/1)", "pass a float or bool mask")
    s, _, h, w = kshape
    if m.ndim == 1:
        m = m.reshape(1, 1, 1, -1)
    elif m.ndim == 2:
        m = m.reshape(1, 1, *m.shape)
    elif m.ndim == 3:
        m = m.reshape(m.shape[0], 1, *m.shape[1:])
    if m.ndim != 4 or m.shape[-1] != w or m.shape[-2] not in (1, h) or m.shape[0] not in (1, s) or m.shape[1] != 1:
        raise input_error("mask", f"shape {tuple(np.shape(mask))} does not fit k-space {tuple(kshape)}",
                          "use [W], [H, W], [S, H, W] or [S, 1, 1, W] (slices, rows, columns as the k-space)")
    m = m.to(torch.float32)
    check_binary_mask("mask", m.detach().cpu().numpy(), slice_axis=True)
    return m


def _pattern_mask(kspace: torch.Tensor) -> torch.Tensor | None:
    """The sampling pattern of the data ``[S, 1, H, W]`` (non-zero in any coil), None when fully sampled."""
    pattern = (kspace != 0).any(dim=1, keepdim=True)
    if bool(pattern.all()):
        return None
    cols = pattern.all(dim=-2, keepdim=True)
    if bool((pattern == cols).all()):  # a column pattern: keep the cheap 1-D form
        pattern = cols
    return pattern.to(torch.float32)


def support_energy(kspace: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Per slice ``[B]``: fraction of the zero-filled RSS image's energy where the maps are non-zero."""
    zf = rss(ifft2c(kspace), dim=1) ** 2
    inside = (maps.abs().sum(dim=1) > 0).to(zf.dtype)
    return (zf * inside).sum(dim=(-2, -1)) / zf.sum(dim=(-2, -1)).clamp_min(torch.finfo(zf.dtype).tiny)


def estimate_maps(kspace: torch.Tensor, mask: torch.Tensor | None, map_options: dict[str, Any],
                  min_support_energy: float = 0.5) -> torch.Tensor:
    """ESPIRiT maps ``[B, C, H, W]`` of masked k-space, recomputed without crop when the support check fails."""
    maps = espirit_sens_maps(kspace, mask=mask, **map_options)
    kept = support_energy(kspace, maps)
    if bool((kept < min_support_energy).any()) and map_options.get("crop", 0.8) > 0:
        worst = float(kept.min())
        warnings.warn(f"ESPIRiT map support keeps only {100 * worst:.0f} % of the zero-filled image energy "
                      f"(crop {map_options.get('crop', 0.8)}); recomputing the maps without crop", stacklevel=3)
        maps = espirit_sens_maps(kspace, mask=mask, **{**map_options, "crop": 0.0})
    return maps


def reconstruct(kspace: Any, mask: Any = None, method: str = "cg-sense", sens_maps: Any = None,
                solver_log: list | None = None, **options: Any) -> Any:
    """Reconstruct one slice ``[C, H, W]`` or a volume ``[S, C, H, W]``; see the module docstring.

    ``solver_log``: a list that receives one stopping record per solved batch (iterative methods; see
    :mod:`mrlearn.recon.stopping`).

    >>> import numpy as np
    >>> k = np.fft.fft2(np.ones((1, 8, 8)), norm="ortho").astype(np.complex64)
    >>> reconstruct(k, method="zero-filled").shape
    (8, 8)
    """
    as_numpy = not torch.is_tensor(kspace)
    own, map_options, driver = split_options(method, options)
    if kspace is None or np.size(kspace) == 0:
        raise input_error("kspace", "no k-space (None or an empty array)", "pass complex k-space [C, H, W] or [S, C, H, W]")
    try:
        ksp = torch.as_tensor(np.asarray(kspace) if as_numpy else kspace)
    except (TypeError, ValueError, RuntimeError):
        raise input_error("kspace", f"not a numeric array ({type(kspace).__name__})", "pass complex64 k-space") from None
    single = ksp.ndim == 3
    if single:
        ksp = ksp.unsqueeze(0)
    if ksp.ndim != 4:
        raise input_error("kspace", f"expected [C, H, W] or [S, C, H, W], got shape {tuple(ksp.shape)}",
                          "add a coil axis (C = 1 for single-coil data)")
    if not ksp.is_complex():
        raise input_error("kspace", f"expected complex k-space, got {ksp.dtype}", "pass complex64 data")
    device = resolve_device(driver["device"], "options.device") if driver.get("device") is not None else None
    ksp = ksp.to(device=device or ksp.device, dtype=torch.complex64)
    check_kspace("kspace", ksp.detach().cpu().numpy())  # NaN/Inf, all zero, float32 overflow: as for files
    check_matrix("kspace", *ksp.shape[-2:])
    msk = _as_mask(mask, tuple(ksp.shape), ksp.device)
    if msk is None:
        msk = _pattern_mask(ksp)
    if driver.get("recon_size") is not None:
        size = driver["recon_size"]
        if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
            raise input_error("recon_size", f"{size!r} is not two integers (h, w)", "e.g. recon_size=(320, 320)")
        check_recon_size("recon_size", tuple(size), tuple(ksp.shape[-2:]))
    maps_all = None
    if sens_maps is not None:
        maps_all = torch.as_tensor(np.asarray(sens_maps) if not torch.is_tensor(sens_maps) else sens_maps)
        maps_all = maps_all.to(device=ksp.device, dtype=torch.complex64)
        maps_all = maps_all.unsqueeze(0) if maps_all.ndim == 3 else maps_all
        if maps_all.ndim != 4 or tuple(maps_all.shape[1:]) != tuple(ksp.shape[1:]) or maps_all.shape[0] not in (1, ksp.shape[0]):
            raise input_error("sens_maps", f"shape {tuple(maps_all.shape)} does not match k-space {tuple(ksp.shape)}",
                              "pass maps shaped like the k-space ([C, H, W] or [S, C, H, W])")
        if not bool(torch.isfinite(torch.view_as_real(maps_all)).all()):
            raise input_error("sens_maps", "contain NaN or Inf", "pass finite coil maps (or none: ESPIRiT estimates them)")
        if not bool((maps_all.abs().sum(dim=1) > 0).any(dim=(-2, -1)).all()):
            raise input_error("sens_maps", "are zero everywhere in a slice", "pass the coil maps of the data")
    fn = solver(method)
    takes_info = solver_log is not None and "info" in inspect.signature(fn).parameters
    batch = max(1, int(driver.get("batch_size", 4)))
    out = []
    for s0 in range(0, ksp.shape[0], batch):
        k = ksp[s0 : s0 + batch]
        m = None if msk is None else (msk[s0 : s0 + batch] if msk.shape[0] > 1 else msk)
        k = k if m is None else k * m + 0.0
        maps = None
        if method in NEEDS_MAPS:
            if maps_all is not None:
                maps = maps_all[s0 : s0 + batch] if maps_all.shape[0] > 1 else maps_all.expand(k.shape[0], -1, -1, -1)
            elif k.shape[1] > 1:
                maps = estimate_maps(k, m, map_options, float(driver.get("min_support_energy", 0.5)))
        if takes_info:
            solver_log.append({})
            img = fn(k, m, maps, info=solver_log[-1], **own).abs()
        else:
            img = fn(k, m, maps, **own).abs()
        if driver.get("recon_size") is not None:
            img = crop_or_pad(img, tuple(int(v) for v in driver["recon_size"]))
        out.append(img.to(torch.float32))
    result = torch.cat(out, dim=0)
    result = result[0] if single else result
    return result.cpu().numpy() if as_numpy else result
