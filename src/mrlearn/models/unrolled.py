"""Unrolled physics-guided networks (Liu et al. 2021 eq. 1, SSDU/MoDL, E2E-VarNet): ``min ||E m - k||^2 + R(m)``.

``UnrolledNet.forward(kspace, mask, sens_maps=None) -> image`` (``input_kind = "kspace"``, see models.protocol):
  kspace    ``[B, C, H, W]`` complex, already masked (single-coil: ``C = 1``, the operator's map is all ones)
  mask      float 0/1 broadcastable to kspace: ``[B, 1, 1, W]`` columns or ``[B, 1, H, W]`` 2-D
  sens_maps ``[B, C, H, W]`` complex or None (single-coil, or multi-coil maps estimated in the model)
  image     ``[B, H, W]`` complex at the k-space matrix size (crop/magnitude is the caller's job)

Start ``x_0 = A^H y`` (zero-filled SENSE image); each of ``cascades`` iterations applies a residual learned
regulariser ``z = x + R(x)`` (complex as 2 channels: the SSDU ResNet or the fastMRI U-Net) followed by data
consistency: a gradient step ``x = z - eta A^H(A z - y)`` (``dc="gradient"``) or the MoDL proximal step
``(A^H A + lam I) x = A^H y + lam z`` by CG (``dc="cg"``). Weights are per cascade or shared
(``share_weights``). Scale: each slice is divided by ``max |A^H y|`` before the cascades and the result
multiplied back, so the network is scale-equivariant (k-space scaled anywhere from 1e-6 to 1e12 behaves alike).

Maps for multi-coil data: the ``sens_maps`` argument (``maps="given"``), or, when it is None, estimated
in the forward pass (``maps="acs"``: low-resolution ACS maps; ``maps="espirit"``: ESPIRiT, no gradient).
``sens_refine=True`` replaces them by the E2E-VarNet learned estimate (U-Net on the ACS coil images,
normalised by RSS). ``checkpointing=True`` recomputes each cascade in the backward pass
(``torch.utils.checkpoint``, non-reentrant): less memory for more compute, identical results.

The pieces (:class:`Cascade`, :func:`build_regulariser`, :func:`build_dc`, :func:`check_inputs`, :func:`coil_maps`,
:func:`normalised_start`, :func:`run_cascades`) are public: ``mtl.networks`` composes its multi-task networks
from them.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mrlearn.data.sample import Batch, as_batch
from mrlearn.errors import input_error
from mrlearn.models.data_consistency import CG_GRADS, ConjugateGradientDC, GradientDC
from mrlearn.models.resnet import ResNet
from mrlearn.models.sens_refine import SensitivityRefinement, acs_coil_images, normalise_by_rss
from mrlearn.models.unet import Unet
from mrlearn.physics.complex import channels_to_complex, complex_to_channels, crop_or_pad
from mrlearn.physics.espirit import espirit_sens_maps
from mrlearn.physics.sense import SenseOperator
from mrlearn.registry import register

WHERE = "model"  # config section named in user-facing errors
DC_KINDS = ("gradient", "cg")
REGULARISERS = ("resnet", "unet")
MAP_SOURCES = ("given", "acs", "espirit")


class Cascade(nn.Module):
    """One iteration: ``z = x + R(x)`` (``R`` on 2-channel views), then data consistency ``dc(z, y)``.

    Extra positional arguments after ``sens_maps`` go to the regulariser (a multi-task one takes the task index).
    ``aty``: ``A^H y`` of ``kspace`` ``[B, H, W]`` when the caller has it (:func:`run_cascades`), for the
    data-consistency layers of :mod:`~mrlearn.models.data_consistency`, which otherwise compute it themselves.
    """

    def __init__(self, regulariser: nn.Module, dc: nn.Module):
        super().__init__()
        self.regulariser = regulariser
        self.dc = dc

    @property
    def takes_aty(self) -> bool:
        """Whether the data-consistency layer accepts a precomputed ``A^H y`` (``aty``)."""
        return isinstance(self.dc, (GradientDC, ConjugateGradientDC))

    def forward(self, x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor | None,
                sens_maps: torch.Tensor | None, *regulariser_args, aty: torch.Tensor | None = None) -> torch.Tensor:
        update = self.regulariser(complex_to_channels(x), *regulariser_args).to(x.real.dtype)  # float32 under bf16 autocast
        z = x + channels_to_complex(update)
        if aty is None:
            return self.dc(z, kspace, mask, sens_maps)
        return self.dc(z, kspace, mask, sens_maps, aty=aty)


def build_regulariser(kind: str, chans: int, num_blocks: int, num_pools: int) -> nn.Module:
    """The residual regulariser of one cascade, 2 channels in and out: the SSDU ResNet or the fastMRI U-Net."""
    if kind == "resnet":
        return ResNet(in_chans=2, out_chans=2, chans=chans, num_blocks=num_blocks)
    return Unet(in_chans=2, out_chans=2, chans=chans, num_pool_layers=num_pools)


def build_dc(kind: str, eta_init: float = 1.0, lam_init: float = 0.05, cg_iters: int = 10,
             cg_grad: str = "implicit") -> nn.Module:
    """The data-consistency layer of one cascade: a learned gradient step or the MoDL CG solve."""
    if kind == "gradient":
        return GradientDC(eta_init)
    return ConjugateGradientDC(lam_init, cg_iters, cg_grad=cg_grad)


def check_inputs(kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None, multicoil: bool,
                 missing_maps_todo: str | None = None) -> None:
    """One-line errors for inputs an unrolled network cannot take (shapes in the module docstring).

    ``missing_maps_todo``: the advice when a multi-coil model gets no maps and cannot estimate them; None when it can.
    """
    if not torch.is_tensor(kspace) or kspace.ndim != 4 or not kspace.is_complex():
        shape = tuple(kspace.shape) if torch.is_tensor(kspace) else type(kspace).__name__
        raise input_error(f"{WHERE} input", f"kspace must be complex [B, C, H, W], got {shape}",
                          "give masked k-space with a coil axis (C = 1 for single-coil)")
    coils = kspace.shape[1]
    if multicoil and coils == 1:
        raise input_error(f"{WHERE}.multicoil", "the model is multi-coil but the k-space has 1 coil (single-coil data)",
                          "set model.multicoil: false for single-coil data")
    if not multicoil and coils != 1:
        raise input_error(f"{WHERE}.multicoil", f"the model is single-coil but the k-space has {coils} coils",
                          "set model.multicoil: true for multi-coil data")
    if mask is not None:
        try:
            ok = mask.ndim == 4 and torch.broadcast_shapes(mask.shape, kspace.shape) == kspace.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise input_error(f"{WHERE} input", f"mask shape {tuple(mask.shape)} does not broadcast to the k-space "
                              f"shape {tuple(kspace.shape)}", "use [B, 1, 1, W] column or [B, 1, H, W] 2-D masks")
    if multicoil and sens_maps is not None and tuple(sens_maps.shape) != tuple(kspace.shape):
        what = (f"sens_maps have {sens_maps.shape[1]} coils but the k-space has {coils}"
                if sens_maps.ndim == 4 and sens_maps.shape[0] == kspace.shape[0] and sens_maps.shape[2:] == kspace.shape[2:]
                else f"sens_maps shape {tuple(sens_maps.shape)} does not match the k-space shape {tuple(kspace.shape)}")
        raise input_error("sens_maps", what, "give one map per coil at the k-space matrix size, [B, C, H, W]")
    if multicoil and sens_maps is None and missing_maps_todo is not None:
        raise input_error(f"{WHERE}.maps", "no sens_maps were given to a multi-coil model", missing_maps_todo)


def coil_maps(kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None, multicoil: bool,
              source: str = "acs", sens_net: nn.Module | None = None) -> torch.Tensor | None:
    """Maps ``[B, C, H, W]`` for the operator, or None for single-coil (one coil, map of ones).

    Order: the learned estimate ``sens_net`` when given, else the given maps, else ESPIRiT (``source="espirit"``,
    no gradient) or the ACS maps (low-resolution ACS coil images divided by their RSS).
    """
    if not multicoil:
        return None
    full = torch.ones_like(kspace.real) if mask is None else mask
    if sens_net is not None:
        return sens_net(kspace, full)
    if sens_maps is not None:
        return sens_maps.to(kspace.dtype)
    if source == "espirit":
        with torch.no_grad():
            return espirit_sens_maps(kspace, where="kspace").to(kspace.dtype)
    return normalise_by_rss(acs_coil_images(kspace, full))


def normalised_start(kspace: torch.Tensor, mask: torch.Tensor | None, maps: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x0, y, scale)``: ``x0 = A^H y / scale`` ``[B, H, W]``, ``y = kspace / scale``, ``scale = max |A^H y|``
    per slice (1 where that is 0) shaped ``[B, 1, 1]``; multiply the network's output by ``scale``."""
    x = SenseOperator(maps, mask).adjoint(kspace)
    scale = x.detach().abs().flatten(1).amax(-1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None, None]
    return x / scale, kspace / scale[:, None], scale


def measured_adjoint(steps: Sequence[nn.Module], kspace: torch.Tensor, mask: torch.Tensor | None,
                     maps: torch.Tensor | None) -> torch.Tensor | None:
    """``A^H y`` ``[B, H, W]`` of the measured k-space, the same in every cascade, computed once for the
    :class:`Cascade` steps that take it (None when none does)."""
    if not any(isinstance(s, Cascade) and s.takes_aty for s in steps):
        return None
    return SenseOperator(maps, mask).adjoint(kspace)


def run_cascades(steps: Sequence[nn.Module], x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor | None,
                 maps: torch.Tensor | None, *regulariser_args, checkpointing: bool = False) -> torch.Tensor:
    """Apply the cascades ``steps`` in order; ``checkpointing`` recomputes each in the backward pass.
    ``A^H y`` is computed once (:func:`measured_adjoint`) and handed to every cascade that takes it."""
    aty = measured_adjoint(steps, kspace, mask, maps)
    for step in steps:
        kw = {"aty": aty} if aty is not None and isinstance(step, Cascade) and step.takes_aty else {}
        if checkpointing and torch.is_grad_enabled():
            x = checkpoint(step, x, kspace, mask, maps, *regulariser_args, use_reentrant=False, **kw)
        else:
            x = step(x, kspace, mask, maps, *regulariser_args, **kw)
    return x


@register("model", "unrolled")
class UnrolledNet(nn.Module):
    """Generic unrolled network; see the module docstring for the maths and the shapes.

    Options: ``cascades`` K; ``dc`` ``"gradient"`` (learned step ``eta``, init ``eta_init``) or ``"cg"`` (learned
    ``lam``, init ``lam_init``, ``cg_iters`` CG iterations, gradients ``cg_grad`` ``"implicit"``/``"unrolled"``);
    ``share_weights``; ``regulariser`` ``"resnet"`` (``chans``, ``num_blocks``) or ``"unet"`` (``chans``,
    ``num_pools``); ``multicoil``; ``maps``; ``sens_refine`` (``sens_chans``, ``sens_pools``); ``checkpointing``.
    """

    input_kind = "kspace"  # model-input protocol (models.protocol): called as model(kspace, mask, sens_maps)

    def __init__(
        self,
        cascades: int = 10,
        dc: Literal["gradient", "cg"] = "cg",
        share_weights: bool = True,
        regulariser: Literal["resnet", "unet"] = "resnet",
        chans: int = 64,
        num_blocks: int = 15,
        num_pools: int = 4,
        eta_init: float = 1.0,
        lam_init: float = 0.05,
        cg_iters: int = 10,
        cg_grad: Literal["implicit", "unrolled"] = "implicit",
        multicoil: bool = True,
        maps: Literal["given", "acs", "espirit"] = "given",
        sens_refine: bool = False,
        sens_chans: int = 8,
        sens_pools: int = 4,
        checkpointing: bool = False,
    ):
        super().__init__()
        for key, value, choices in (("dc", dc, DC_KINDS), ("regulariser", regulariser, REGULARISERS),
                                    ("maps", maps, MAP_SOURCES), ("cg_grad", cg_grad, CG_GRADS)):
            if value not in choices:
                raise input_error(f"{WHERE}.{key}", f"unknown value {value!r}", f"choose one of: {', '.join(choices)}")
        for key, value, low in (("cascades", cascades, 1), ("chans", chans, 1), ("num_blocks", num_blocks, 0),
                                ("num_pools", num_pools, 1), ("cg_iters", cg_iters, 1), ("sens_chans", sens_chans, 1),
                                ("sens_pools", sens_pools, 1)):
            if value < low:
                raise input_error(f"{WHERE}.{key}", f"must be at least {low}, got {value}", "fix the value")
        if dc == "cg" and lam_init <= 0:
            raise input_error(f"{WHERE}.lam_init", f"must be > 0, got {lam_init}", "e.g. 0.05")
        if sens_refine and not multicoil:
            raise input_error(f"{WHERE}.sens_refine", "needs a multi-coil model", "set sens_refine: false for single-coil data")
        self.num_cascades = int(cascades)
        self.share_weights = bool(share_weights)
        self.multicoil = bool(multicoil)
        self.maps = maps
        self.checkpointing = bool(checkpointing)

        self.cascades = nn.ModuleList(
            Cascade(build_regulariser(regulariser, chans, num_blocks, num_pools),
                    build_dc(dc, eta_init, lam_init, cg_iters, cg_grad))
            for _ in range(1 if share_weights else cascades))
        self.sens_net = SensitivityRefinement(True, sens_chans, sens_pools) if sens_refine else None

    def cascade(self, i: int) -> Cascade:
        """The module of iteration ``i`` (the same one for every ``i`` with shared weights)."""
        return self.cascades[0 if self.share_weights else i]

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None = None) -> torch.Tensor:
        """Masked k-space ``[B, C, H, W]``, mask, maps ``[B, C, H, W]`` or None -> complex image ``[B, H, W]``."""
        can_estimate = self.sens_net is not None or self.maps != "given"
        check_inputs(kspace, mask, sens_maps, self.multicoil, None if can_estimate else
                     "provide maps in the data, or set model.maps: acs|espirit or model.sens_refine: true")
        maps = coil_maps(kspace, mask, sens_maps, self.multicoil, self.maps, self.sens_net)
        x, y, scale = normalised_start(kspace, mask, maps)
        steps = [self.cascade(i) for i in range(self.num_cascades)]
        return run_cascades(steps, x, y, mask, maps, checkpointing=self.checkpointing) * scale


def reconstruct_batch(model: nn.Module, batch: Batch | Mapping[str, Any]) -> torch.Tensor:
    """A batch of training samples (:class:`~mrlearn.data.sample.Batch` with k-space) -> magnitude ``[B, h, w]``.

    Uses ``kspace`` ``[B, C, H, W]`` (masked, divided by ``scale``), ``mask``, ``sens_maps`` (optional) and ``scale``
    ``[B]``; returns ``|model(kspace, mask, sens_maps)|`` centre-cropped (or zero-padded) to the target size
    ``target.shape[-2:]`` and multiplied by ``scale``, i.e. in the data's units like the targets.
    """
    batch = as_batch(batch)
    image = model(batch.kspace, batch.mask, batch.sens_maps)
    magnitude = crop_or_pad(image.abs(), tuple(batch.target.shape[-2:]))
    return magnitude * batch.scale.to(magnitude.dtype).reshape(-1, 1, 1)
