"""Unrolled physics-guided networks (seed 000 eq. 1, SSDU/MoDL, E2E-VarNet): ``min ||E m - k||^2 + R(m)``.

``UnrolledNet.forward(kspace, mask, sens_maps=None) -> image``:
  kspace    ``[B, C, H, W]`` complex, already masked (single-coil: ``C = 1``)
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
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mrlearn.errors import input_error
from mrlearn.models.data_consistency import CG_GRADS, ConjugateGradientDC, GradientDC
from mrlearn.models.resnet import ResNet
from mrlearn.models.sens_refine import SensitivityRefinement, acs_coil_images, normalise_by_rss
from mrlearn.physics.complex import channels_to_complex, complex_to_channels, crop_or_pad
from mrlearn.physics.sense import sense_adjoint
from mrlearn.registry import register

WHERE = "model"  # config section named in user-facing errors
DC_KINDS = ("gradient", "cg")
REGULARISERS = ("resnet", "unet")
MAP_SOURCES = ("given", "acs", "espirit")


class Cascade(nn.Module):
    """One iteration: ``z = x + R(x)`` (``R`` on 2-channel views), then data consistency ``dc(z, y)``."""

    def __init__(self, regulariser: nn.Module, dc: nn.Module):
        super().__init__()
        self.regulariser = regulariser
        self.dc = dc

    def forward(self, x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor | None,
                sens_maps: torch.Tensor | None) -> torch.Tensor:
        update = self.regulariser(complex_to_channels(x)).to(x.real.dtype)  # float32 again under bf16 autocast
        z = x + channels_to_complex(update)
        return self.dc(z, kspace, mask, sens_maps)


def _build_regulariser(kind: str, chans: int, num_blocks: int, num_pools: int) -> nn.Module:
    if kind == "resnet":
        return ResNet(in_chans=2, out_chans=2, chans=chans, num_blocks=num_blocks)
    from mrlearn.models.unet import Unet  # the fastMRI U-Net of the training spine

    return Unet(in_chans=2, out_chans=2, chans=chans, num_pool_layers=num_pools)


def _espirit_maps(kspace: torch.Tensor) -> torch.Tensor:
    """ESPIRiT maps ``[B, C, H, W]`` of masked k-space (``physics.espirit``, BART ecalib defaults), no gradient."""
    try:
        from mrlearn.physics.espirit import espirit_sens_maps
    except ImportError:
        raise input_error(f"{WHERE}.maps", "ESPIRiT (mrlearn.physics.espirit) is not available in this installation",
                          "use model.maps: acs or model.sens_refine: true") from None
    with torch.no_grad():
        return espirit_sens_maps(kspace, where="kspace").to(kspace.dtype)


@register("model", "unrolled")
class UnrolledNet(nn.Module):
    """Generic unrolled network; see the module docstring for the maths and the shapes.

    Options: ``cascades`` K; ``dc`` ``"gradient"`` (learned step ``eta``, init ``eta_init``) or ``"cg"`` (learned
    ``lam``, init ``lam_init``, ``cg_iters`` CG iterations, gradients ``cg_grad`` ``"implicit"``/``"unrolled"``);
    ``share_weights``; ``regulariser`` ``"resnet"`` (``chans``, ``num_blocks``) or ``"unet"`` (``chans``,
    ``num_pools``); ``multicoil``; ``maps``; ``sens_refine`` (``sens_chans``, ``sens_pools``); ``checkpointing``.
    """

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

        def make_cascade() -> Cascade:
            if dc == "gradient":
                dc_layer: nn.Module = GradientDC(eta_init)
            else:
                dc_layer = ConjugateGradientDC(lam_init, cg_iters, cg_grad=cg_grad)
            return Cascade(_build_regulariser(regulariser, chans, num_blocks, num_pools), dc_layer)

        self.cascades = nn.ModuleList(make_cascade() for _ in range(1 if share_weights else cascades))
        self.sens_net = SensitivityRefinement(True, sens_chans, sens_pools) if sens_refine else None

    # ------------------------------------------------------------------------------------------ input checks

    def _check(self, kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None) -> None:
        if not torch.is_tensor(kspace) or kspace.ndim != 4 or not kspace.is_complex():
            shape = tuple(kspace.shape) if torch.is_tensor(kspace) else type(kspace).__name__
            raise input_error(f"{WHERE} input", f"kspace must be complex [B, C, H, W], got {shape}",
                              "give masked k-space with a coil axis (C = 1 for single-coil)")
        coils = kspace.shape[1]
        if self.multicoil and coils == 1:
            raise input_error(f"{WHERE}.multicoil", "the model is multi-coil but the k-space has 1 coil (single-coil data)",
                              "set model.multicoil: false for single-coil data")
        if not self.multicoil and coils != 1:
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
        if self.multicoil and sens_maps is not None and tuple(sens_maps.shape) != tuple(kspace.shape):
            what = (f"sens_maps have {sens_maps.shape[1]} coils but the k-space has {coils}"
                    if sens_maps.ndim == 4 and sens_maps.shape[0] == kspace.shape[0] and sens_maps.shape[2:] == kspace.shape[2:]
                    else f"sens_maps shape {tuple(sens_maps.shape)} does not match the k-space shape {tuple(kspace.shape)}")
            raise input_error("sens_maps", what, "give one map per coil at the k-space matrix size, [B, C, H, W]")
        if self.multicoil and sens_maps is None and self.sens_net is None and self.maps == "given":
            raise input_error(f"{WHERE}.maps", "no sens_maps were given to a multi-coil model",
                              "provide maps in the data, or set model.maps: acs|espirit or model.sens_refine: true")

    def _maps(self, kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None) -> torch.Tensor | None:
        if not self.multicoil:
            return None
        full = torch.ones_like(kspace.real) if mask is None else mask
        if self.sens_net is not None:
            return self.sens_net(kspace, full)
        if sens_maps is not None:
            return sens_maps.to(kspace.dtype)
        if self.maps == "espirit":
            return _espirit_maps(kspace)
        return normalise_by_rss(acs_coil_images(kspace, full))

    # ------------------------------------------------------------------------------------------------ forward

    def cascade(self, i: int) -> Cascade:
        """The module of iteration ``i`` (the same one for every ``i`` with shared weights)."""
        return self.cascades[0 if self.share_weights else i]

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None = None) -> torch.Tensor:
        """Masked k-space ``[B, C, H, W]``, mask, maps ``[B, C, H, W]`` or None -> complex image ``[B, H, W]``."""
        self._check(kspace, mask, sens_maps)
        maps = self._maps(kspace, mask, sens_maps)
        if maps is None:  # single-coil: operators without a coil axis
            kspace = kspace[:, 0]
            mask = None if mask is None else mask[:, 0]
        x = sense_adjoint(kspace, maps, mask)
        scale = x.detach().abs().flatten(1).amax(-1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None, None]
        x = x / scale
        y = kspace / (scale[:, None] if maps is not None else scale)
        for i in range(self.num_cascades):
            step = self.cascade(i)
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(step, x, y, mask, maps, use_reentrant=False)
            else:
                x = step(x, y, mask, maps)
        return x * scale



def reconstruct_batch(model: nn.Module, batch: dict) -> torch.Tensor:
    """A batch of training samples (``data.transforms.ReconTransform(keep_kspace=True)``) -> magnitude ``[B, h, w]``.

    Uses ``kspace`` ``[B, C, H, W]`` (masked, divided by ``scale``), ``mask``, ``sens_maps`` (optional) and ``scale``
    ``[B]``; returns ``|model(kspace, mask, sens_maps)|`` centre-cropped (or zero-padded) to the target size
    ``batch["target"].shape[-2:]`` and multiplied by ``scale``, i.e. in the data's units like the targets.
    """
    image = model(batch["kspace"], batch["mask"], batch.get("sens_maps"))
    magnitude = crop_or_pad(image.abs(), tuple(batch["target"].shape[-2:]))
    return magnitude * batch["scale"].to(magnitude.dtype).reshape(-1, 1, 1)
