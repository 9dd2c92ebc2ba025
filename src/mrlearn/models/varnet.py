"""fastMRI's end-to-end variational network, E2E-VarNet (Sriram et al., MICCAI 2020).

``VarNet.forward(kspace, mask, sens_maps=None, num_low_frequencies=None) -> image`` (``input_kind = "kspace"``):
  kspace    ``[B, C, H, W]`` complex64, already masked (centred orthonormal FFT of the last two axes,
            :mod:`mrlearn.physics.fft`, the convention fastMRI's real ``[..., 2]`` tensors use)
  mask      0/1 (or bool) ``[B, 1, 1, W]`` columns or ``[B, 1, H, W]`` 2-D, broadcast over coils; None: all sampled
  sens_maps ignored: the network always estimates its own maps (the argument is there for the k-space protocol)
  num_low_frequencies  ACS width, an int or ``[B]`` tensor; None (or 0): found from the mask, see :func:`acs_width`
  image     ``[B, H, W]`` real, the RSS over coils of ``F^{-1}(k_T)`` at the k-space size (cropping to the target
            size is the caller's job, as for the other k-space models: ``SupervisedKspaceModule``)

Cascades act on k-space: ``k_{t+1} = k_t - eta_t M (k_t - k_0) - E(R_t(Rd(k_t)))`` with ``Rd(k) = sum_c conj(S_c)
F^{-1}(k_c)``, ``E(x)_c = F(S_c x)``, ``eta_t`` learned (``dc_weight``, initialised to 1) and ``R_t`` a
:class:`NormUnet`. The maps ``S`` come from :class:`SensitivityModel`: the ACS columns only, inverse FFT per coil, a
NormUnet on each coil image (coils folded into the batch), divided by the RSS over coils.

Parameter names are fastMRI's (``sens_net.norm_unet.unet.down_sample_layers.0.layers.0.weight``,
``cascades.0.model.unet.up_conv.3.1.bias``, ``cascades.0.dc_weight``, ...): fastMRI's published state dicts load
with ``load_state_dict`` (or ``model.init``). Outputs equal fastMRI's to float32 rounding with ``pools <= 4``
(``benchmarks/varnet_parity.py``); with more poolings the U-Net pads to a multiple of ``2 ** pools`` where
fastMRI's pads odd sizes by reflection. Two guards where fastMRI divides by zero (outputs equal elsewhere): a
zero standard deviation in the normalisation, a zero RSS of the maps. A half of the mask's centre row without an
unsampled column (fully sampled data) counts as ACS; fastMRI's search finds 1 line there.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from mrlearn.errors import input_error
from mrlearn.models.unet import Unet
from mrlearn.models.unrolled import check_inputs
from mrlearn.physics.fft import fft2c, ifft2c
from mrlearn.registry import register

WHERE = "model"
PAD_MULTIPLE = 16  # NormUnet pads height and width to a multiple of this


def _tiny(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).tiny


class NormUnet(nn.Module):
    """fastMRI's U-Net (:class:`~mrlearn.models.unet.Unet`, ``self.unet``) on complex images, normalised around it.

    ``[N, c, H, W]`` complex -> ``[N, c, H, W]`` complex. The ``2c`` real channels are the ``c`` real parts then the
    ``c`` imaginary parts; each half is shifted by its mean and divided by its (unbiased) standard deviation, zero
    padded (centred, the extra pixel after) to a multiple of 16 in H and W, run through the U-Net, cropped and
    scaled back.
    """

    def __init__(self, chans: int, num_pools: int, in_chans: int = 2, out_chans: int = 2, drop_prob: float = 0.0):
        super().__init__()
        self.unet = Unet(in_chans=in_chans, out_chans=out_chans, chans=chans, num_pool_layers=num_pools,
                         drop_prob=drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        groups = torch.view_as_real(x).permute(0, 4, 1, 2, 3).reshape(n, 2, -1)  # a view: fastMRI's summation order
        mean = groups.mean(dim=-1, keepdim=True)
        std = groups.std(dim=-1, keepdim=True).clamp_min(_tiny(groups))
        y = ((groups - mean) / std).reshape(n, 2 * c, h, w)
        ph, pw = -h % PAD_MULTIPLE, -w % PAD_MULTIPLE
        top, left = ph // 2, pw // 2
        if ph or pw:
            y = F.pad(y, (left, pw - left, top, ph - top))
        y = self.unet(y)[..., top : top + h, left : left + w].to(groups.dtype)  # float32 again under bf16 autocast
        y = (y.reshape(n, 2, -1) * std + mean).reshape(n, 2 * c, h, w)
        return torch.complex(y[:, :c].contiguous(), y[:, c:].contiguous())


def _centre_row(mask: torch.Tensor, batch: int) -> torch.Tensor:
    """The mask's row through the k-space centre as bool ``[B, W]`` (a column mask has one row)."""
    m = mask[:, 0]
    return (m[:, m.shape[1] // 2] != 0).expand(batch, -1)


def acs_width(mask: torch.Tensor, batch: int, num_low_frequencies: Any = None) -> torch.Tensor:
    """Number of ACS columns per sample, int64 ``[B]``, as fastMRI's sensitivity network finds them.

    Given ``num_low_frequencies`` (int or ``[B]``) wins where it is positive. Otherwise, on the mask's centre row
    (:func:`_centre_row`): ``left`` sampled columns in a row leftwards from ``W // 2 - 1``, ``right`` rightwards
    from ``W // 2``, width ``max(2 min(left, right), 1)`` (a symmetric block).
    """
    row = _centre_row(mask, batch).to(torch.int64)
    c = row.shape[-1] // 2
    right = torch.cumprod(row[:, c:], dim=-1).sum(dim=-1)
    left = torch.cumprod(row[:, :c].flip(-1), dim=-1).sum(dim=-1)
    found = (2 * torch.minimum(left, right)).clamp_min(1)
    if num_low_frequencies is None:
        return found
    given = torch.as_tensor(num_low_frequencies, device=found.device).to(torch.int64).reshape(-1).expand(batch)
    return torch.where(given > 0, given, found)


def acs_columns(width: torch.Tensor, size: int) -> torch.Tensor:
    """Bool ``[B, 1, 1, W]``: the ``width[b]`` centre columns, starting at ``(W - width + 1) // 2`` (fastMRI)."""
    start = (size - width + 1) // 2
    cols = torch.arange(size, device=width.device)
    keep = (cols >= start[:, None]) & (cols < (start + width)[:, None])
    return keep[:, None, None, :]


def divide_by_rss(x: torch.Tensor) -> torch.Tensor:
    """Coil images ``[B, C, H, W]`` complex divided by their RSS over coils (left at 0 where all coils are 0)."""
    r = torch.sqrt((x.real.square() + x.imag.square()).sum(dim=1, keepdim=True))
    r = torch.where(r > 0, r, torch.ones_like(r))
    return torch.complex(x.real / r, x.imag / r)


class SensitivityModel(nn.Module):
    """Learned coil maps ``[B, C, H, W]`` complex (RSS 1 over coils) from masked k-space ``[B, C, H, W]``.

    ``mask_center``: keep only the ACS columns (:func:`acs_width`, :func:`acs_columns`) before the inverse FFT.
    """

    def __init__(self, chans: int, num_pools: int, in_chans: int = 2, out_chans: int = 2, drop_prob: float = 0.0,
                 mask_center: bool = True):
        super().__init__()
        self.mask_center = bool(mask_center)
        self.norm_unet = NormUnet(chans, num_pools, in_chans=in_chans, out_chans=out_chans, drop_prob=drop_prob)

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor, num_low_frequencies: Any = None) -> torch.Tensor:
        b, c, h, w = kspace.shape
        if self.mask_center:
            keep = acs_columns(acs_width(mask, b, num_low_frequencies), w)
            kspace = torch.where(keep, kspace, torch.zeros((), dtype=kspace.dtype, device=kspace.device))
        coil_images = ifft2c(kspace).reshape(b * c, 1, h, w)
        return divide_by_rss(self.norm_unet(coil_images).reshape(b, c, h, w))


class VarNetBlock(nn.Module):
    """One cascade on k-space ``[B, C, H, W]``: ``k - dc_weight M (k - k0) - E(model(Rd(k)))`` (module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.dc_weight = nn.Parameter(torch.ones(1))

    def forward(self, current: torch.Tensor, ref: torch.Tensor, sampled: torch.Tensor,
                sens_maps: torch.Tensor) -> torch.Tensor:
        image = (ifft2c(current) * sens_maps.conj()).sum(dim=1, keepdim=True)  # Rd: [B, 1, H, W]
        model_term = fft2c(self.model(image) * sens_maps)  # E
        zero = torch.zeros((), dtype=current.dtype, device=current.device)
        soft_dc = torch.where(sampled, current - ref, zero) * self.dc_weight
        return current - soft_dc - model_term


@register("model", "varnet")
class VarNet(nn.Module):
    """E2E-VarNet with fastMRI's defaults (12 cascades, U-Nets of 18 channels / 4 poolings, sensitivity U-Net of 8
    channels / 4 poolings); shapes and conventions in the module docstring.

    ``mask_center``: the sensitivity network sees only the ACS columns (fastMRI's default). ``checkpointing``:
    recompute each cascade in the backward pass (less memory, more time, identical results).
    """

    input_kind = "kspace"  # model-input protocol (models.protocol): called as model(kspace, mask, sens_maps)

    def __init__(self, num_cascades: int = 12, sens_chans: int = 8, sens_pools: int = 4, chans: int = 18,
                 pools: int = 4, mask_center: bool = True, checkpointing: bool = False):
        super().__init__()
        for key, value in (("num_cascades", num_cascades), ("sens_chans", sens_chans), ("sens_pools", sens_pools),
                           ("chans", chans), ("pools", pools)):
            if value < 1:
                raise input_error(f"{WHERE}.{key}", f"must be at least 1, got {value}", "fix the value")
        self.checkpointing = bool(checkpointing)
        self.sens_net = SensitivityModel(sens_chans, sens_pools, mask_center=mask_center)
        self.cascades = nn.ModuleList(VarNetBlock(NormUnet(chans, pools)) for _ in range(num_cascades))

    def sens_maps(self, kspace: torch.Tensor, mask: torch.Tensor | None = None,
                  num_low_frequencies: Any = None) -> torch.Tensor:
        """The learned coil maps ``[B, C, H, W]`` the cascades use."""
        return self.sens_net(kspace, self._mask(kspace, mask), num_low_frequencies)

    @staticmethod
    def _mask(kspace: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return torch.ones(kspace.shape[0], 1, 1, kspace.shape[-1], device=kspace.device) if mask is None else mask

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor | None = None, sens_maps: torch.Tensor | None = None,
                num_low_frequencies: Any = None) -> torch.Tensor:
        """Masked k-space ``[B, C, H, W]`` and its mask -> RSS image ``[B, H, W]`` (``sens_maps`` is not used)."""
        check_inputs(kspace, mask, None, multicoil=kspace.ndim == 4 and kspace.shape[1] > 1)
        mask = self._mask(kspace, mask)
        maps = self.sens_net(kspace, mask, num_low_frequencies)
        sampled = mask != 0
        k = kspace
        for cascade in self.cascades:
            if self.checkpointing and torch.is_grad_enabled():
                k = checkpoint(cascade, k, kspace, sampled, maps, use_reentrant=False)
            else:
                k = cascade(k, kspace, sampled, maps)
        image = ifft2c(k)
        magnitude = torch.sqrt(image.real.square() + image.imag.square())  # |x| then RSS, in fastMRI's order
        return torch.sqrt(magnitude.square().sum(dim=1))

    @staticmethod
    def config_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, int] | None:
        """``num_cascades``, ``chans``, ``pools``, ``sens_chans``, ``sens_pools`` of the VarNet a state dict holds
        (fastMRI's key names, no prefix), or None when it does not hold one."""
        def unet(prefix: str) -> dict[str, int] | None:
            return Unet.config_from_state_dict({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})

        cascades = sum(1 for k in state_dict if re.fullmatch(r"cascades\.\d+\.dc_weight", k))
        sens, reg = unet("sens_net.norm_unet.unet."), unet("cascades.0.model.unet.")
        if not cascades or sens is None or reg is None:
            return None
        return {"num_cascades": cascades, "chans": reg["chans"], "pools": reg["num_pool_layers"],
                "sens_chans": sens["chans"], "sens_pools": sens["num_pool_layers"]}
