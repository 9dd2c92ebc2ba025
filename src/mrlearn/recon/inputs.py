"""Checks shared by the classical reconstructions: shapes of k-space, mask and sensitivity maps.

Conventions: kspace ``[B, C, H, W]`` complex (centred), mask real 0/1 broadcastable to it (``[B, 1, 1, W]``,
``[B, 1, H, W]``, ``[W]``...), sens_maps ``[B, C, H, W]`` (or ``[1, C, H, W]``/``[C, H, W]``, shared by the batch).
"""

from __future__ import annotations

import torch

from mrlearn.errors import input_error


def check_kspace(kspace: torch.Tensor, where: str = "kspace") -> torch.Tensor:
    """``[B, C, H, W]`` complex (``[C, H, W]`` gains a batch axis); anything else is a one-line error."""
    if not torch.is_tensor(kspace):
        raise input_error(where, f"expected a torch tensor, got {type(kspace).__name__}", "pass torch.as_tensor(...)")
    if kspace.ndim == 3:
        kspace = kspace.unsqueeze(0)
    if kspace.ndim != 4 or not kspace.is_complex():
        raise input_error(where, f"expected complex k-space [B, C, H, W], got {kspace.dtype} {tuple(kspace.shape)}",
                          "pass multi-coil complex k-space with a coil axis (C = 1 for single-coil)")
    return kspace


def broadcasts(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether shapes ``a`` and ``b`` broadcast together (numpy rules). Plain Python: ``torch.broadcast_shapes``
    imports sympy on first use (over a second of start-up for a one-slice reconstruction)."""
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(a), reversed(b)))


def check_mask(mask: torch.Tensor | None, kspace: torch.Tensor, where: str = "mask") -> torch.Tensor | None:
    """A real 0/1 mask broadcastable to ``kspace`` (None = fully sampled); returns it as float32 ``[B?, 1, H?, W]``."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask, device=kspace.device)
    if mask.is_complex():
        raise input_error(where, "the mask must be real (0/1)", "pass a float or bool mask")
    mask = mask.to(torch.float32)
    if mask.ndim == 1:
        mask = mask.reshape(1, 1, 1, -1)
    if not broadcasts(tuple(mask.shape), tuple(kspace.shape)):
        raise input_error(where, f"shape {tuple(mask.shape)} does not broadcast to k-space {tuple(kspace.shape)}",
                          "use [W], [B, 1, 1, W] or [B, 1, H, W]")
    return mask


def check_sens_maps(sens_maps: torch.Tensor | None, kspace: torch.Tensor, where: str = "sens_maps"
                    ) -> torch.Tensor:
    """Maps matching ``kspace [B, C, H, W]``; None is allowed only for single-coil data (maps of ones)."""
    b, c, h, w = kspace.shape
    if sens_maps is None:
        if c != 1:
            raise input_error(where, f"multi-coil k-space ({c} coils) needs sensitivity maps",
                              "estimate them (mrlearn.physics.espirit.espirit_sens_maps) or pass them")
        return torch.ones(b, 1, h, w, dtype=kspace.dtype, device=kspace.device)
    if not torch.is_tensor(sens_maps):
        raise input_error(where, f"expected a torch tensor, got {type(sens_maps).__name__}", "pass torch.as_tensor(...)")
    if sens_maps.ndim == 3:
        sens_maps = sens_maps.unsqueeze(0)
    if sens_maps.ndim != 4 or tuple(sens_maps.shape[1:]) != (c, h, w) or sens_maps.shape[0] not in (1, b):
        raise input_error(where, f"shape {tuple(sens_maps.shape)} does not match k-space {tuple(kspace.shape)}",
                          f"pass maps of shape [{b}, {c}, {h}, {w}] (coils, rows, columns as the k-space)")
    return sens_maps.to(device=kspace.device, dtype=kspace.dtype)


def max_sensitivity(sens_maps: torch.Tensor) -> torch.Tensor:
    """Per-sample ``max_x sum_c |S_c(x)|^2`` ``[B, 1, 1]``: an upper bound of the largest eigenvalue of ``A^H A``."""
    return (sens_maps.abs() ** 2).sum(dim=1).amax(dim=(-2, -1)).clamp_min(1e-30)[:, None, None]
