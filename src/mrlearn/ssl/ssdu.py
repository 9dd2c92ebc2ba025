"""SSDU in plain torch: maps, calling a network on a sub-mask, predicted k-space, the loss of one (multi-mask) step.

Shapes follow ``data.transforms`` with ``keep_kspace=True``: ``kspace`` ``[B, C, H, W]`` complex (acquired, i.e.
already masked by Omega, divided by the per-slice ``scale``), ``mask`` ``[B, 1, 1, W]`` or ``[B, 1, H, W]``,
``sens_maps`` ``[B, C, H, W]`` or None. Multi-coil maps: the batch's maps when it has them, else maps estimated
from the ACS block of *all* of Omega (``models.sens_refine``: ACS coil images normalised by their RSS) without
gradient; the same maps are given to the network for Theta (training) and Omega (inference) and used for the
predicted k-space ``A_Lambda x = Lambda F (S x)``. Single-coil data (``C = 1``) use no maps: the SENSE operator's
single coil has a map of ones.

Networks, by their declared ``input_kind`` (``models.protocol``): ``"kspace"`` models are called
``model(kspace, mask, sens_maps)`` -> complex ``[B, H, W]`` (the unrolled network: data consistency on the mask it
is given, i.e. Theta); ``"image"`` models (the fastMRI U-Net, any undeclared module) run on 2-channel images:
``x = model(x0 / s) * s`` with ``x0 = A_Theta^H y`` and ``s = max |x0|`` per sample (no data consistency).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from mrlearn.data.sample import Batch, as_batch
from mrlearn.errors import input_error
from mrlearn.models.protocol import input_kind
from mrlearn.models.sens_refine import acs_coil_images, normalise_by_rss
from mrlearn.physics.complex import channels_to_complex, complex_to_channels
from mrlearn.physics.masks import seed_from_name
from mrlearn.physics.sense import SenseOperator
from mrlearn.ssl.losses import LossResult, ssdu_loss
from mrlearn.ssl.split import SplitOptions, split_batch


def estimate_maps(kspace: torch.Tensor, mask: torch.Tensor, sens_maps: torch.Tensor | None = None) -> torch.Tensor | None:
    """Coil maps for ``kspace`` ``[B, C, H, W]``: given maps, ACS maps of Omega (C > 1), or None (single-coil)."""
    if kspace.shape[1] == 1:
        return None
    if sens_maps is not None:
        return sens_maps.to(kspace.dtype)
    with torch.no_grad():
        return normalise_by_rss(acs_coil_images(kspace, mask))


def adjoint(kspace: torch.Tensor, mask: torch.Tensor | None, maps: torch.Tensor | None) -> torch.Tensor:
    """``A^H y`` ``[B, H, W]`` of ``kspace`` ``[B, C, H, W]`` (``maps`` None: single-coil)."""
    return SenseOperator(maps, mask).adjoint(kspace)


def forward_op(image: torch.Tensor, maps: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """``A x`` ``[B, C, H, W]`` of an image ``[B, H, W]`` (``C = 1`` without maps)."""
    return SenseOperator(maps, mask).forward(image)


def run_model(model: nn.Module, kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None) -> torch.Tensor:
    """The network's complex image ``[B, H, W]`` from the k-space ``kspace * mask`` (see the module docstring)."""
    sub = kspace * mask.to(kspace.real.dtype) + 0.0
    if input_kind(model) == "kspace":
        out = model(sub, mask, maps)
        if not out.is_complex():
            raise input_error("model", f"{type(model).__name__} returns a magnitude image, SSDU needs a complex one "
                              "(its k-space loss re-applies the coil maps)", "use model.name: unrolled for SSDU")
        return out
    x0 = adjoint(sub, mask, maps)
    s = x0.detach().abs().flatten(1).amax(-1)
    s = torch.where(s > 0, s, torch.ones_like(s))[:, None, None]
    out = model(complex_to_channels(x0 / s)).to(x0.real.dtype)
    return channels_to_complex(out) * s


def split_seeds(seed: int, epoch: int, fnames: Sequence[str], slices: Sequence[int], draw: int) -> list[list[int]]:
    """Per-sample seeds ``[seed, epoch, hash(fname), slice, draw]``: a resumed run redraws the same splits."""
    return [[int(seed), int(epoch), seed_from_name(f), int(s), int(draw)] for f, s in zip(fnames, slices)]


def sample_names(batch: Batch | Mapping[str, Any]) -> list[str]:
    """``"fname[slice]"`` of every sample of a batch (for error messages)."""
    batch = as_batch(batch)
    return [f"{f}[{int(s)}]" for f, s in zip(batch.fname, batch.slice)]


@dataclass
class SSDUStep:
    """Result of one SSDU step: the loss, per-sample losses and validity, and the network output on Theta."""

    loss: LossResult
    output: torch.Tensor
    theta: torch.Tensor
    lam: torch.Tensor


def ssdu_step(model: nn.Module, kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None,
              options: SplitOptions, seeds: Sequence[Sequence[int]], num_masks: int = 1,
              names: Sequence[str] | None = None) -> SSDUStep:
    """Multi-mask SSDU: ``num_masks`` Theta/Lambda splits per slice, run as one batch of ``B * num_masks``.

    ``seeds[b]`` seeds sample ``b``; split ``k`` appends ``k``. The loss is the mean over all valid (sample, split).
    """
    shape = (int(kspace.shape[-2]), int(kspace.shape[-1]))
    thetas, lams = [], []
    for k in range(int(num_masks)):
        t, l_ = split_batch(mask, shape, options, [[*s, k] for s in seeds], names)
        thetas.append(t)
        lams.append(l_)
    theta, lam = torch.cat(thetas), torch.cat(lams)
    rep = lambda v: None if v is None else v.repeat(int(num_masks), *([1] * (v.ndim - 1)))  # noqa: E731
    k_all, maps_all = rep(kspace), rep(maps)
    output = run_model(model, k_all, theta, maps_all)
    pred = forward_op(output, maps_all, None)
    return SSDUStep(ssdu_loss(pred, k_all, lam), output, theta, lam)
