"""Coil sensitivities from the auto-calibration (ACS) region, optionally refined by a small U-Net (E2E-VarNet).

Input: masked multi-coil k-space ``[B, C, H, W]`` complex and its mask (broadcastable, ``[B, 1, 1, W]`` column or
``[B, 1, H, W]`` 2-D). The ACS region is the fully sampled block around the k-space centre ``(H // 2, W // 2)``
found from the mask (contiguous run of sampled columns, and rows for 2-D masks). Only that block is kept, inverse
FFT'd to low-resolution coil images, optionally passed coil by coil through a U-Net (2 channels in/out,
instance-normalised around the call) and divided by their root-sum-of-squares, so ``sum_c |S_c|^2 = 1``
wherever the RSS is non-zero. A sample whose mask does not sample the centre falls back to all its samples.
"""

from __future__ import annotations

import torch
from torch import nn

from mrlearn.physics.complex import channels_to_complex, complex_to_channels
from mrlearn.physics.sense import masked_ifft2c, rss


def _centre_run(line: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled run around index ``n // 2`` of ``line`` ``[B, n]`` (0/1): (first index, end index) per sample."""
    n = line.shape[-1]
    c = n // 2
    on = (line > 0).to(torch.int64)
    right = torch.cumprod(on[:, c:], dim=-1).sum(dim=-1)
    left = torch.cumprod(on[:, :c].flip(-1), dim=-1).sum(dim=-1)
    return c - left, c + right


def acs_mask(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Float ``[B, 1, H, W]`` mask of the centre fully-sampled block of ``mask`` (broadcastable to ``[B, C, H, W]``)."""
    h, w = shape
    m = torch.broadcast_to(mask.reshape(mask.shape[0], -1, *mask.shape[-2:])[:, 0], (mask.shape[0], h, w)).float()
    col0, col1 = _centre_run(m[:, h // 2, :])
    row0, row1 = _centre_run(m[:, :, w // 2])
    cols = torch.arange(w, device=mask.device)
    rows = torch.arange(h, device=mask.device)
    in_cols = (cols[None, :] >= col0[:, None]) & (cols[None, :] < col1[:, None])
    in_rows = (rows[None, :] >= row0[:, None]) & (rows[None, :] < row1[:, None])
    block = (in_rows[:, :, None] & in_cols[:, None, :]).float() * m
    empty = block.flatten(1).sum(-1) == 0
    block = torch.where(empty[:, None, None], m, block)
    return block[:, None]


def acs_coil_images(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Low-resolution coil images ``[B, C, H, W]`` from the ACS block of masked k-space ``[B, C, H, W]``."""
    return masked_ifft2c(kspace, acs_mask(mask, kspace.shape[-2:]))


def normalise_by_rss(coil_images: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Divide coil images ``[B, C, H, W]`` by their RSS over coils (zero where the RSS is below ``eps`` x max)."""
    r = rss(coil_images, dim=-3).unsqueeze(-3)
    floor = eps * r.flatten(1).amax(-1).clamp_min(torch.finfo(r.dtype).tiny)[:, None, None, None]
    return torch.where(r > floor, coil_images / torch.maximum(r, floor), torch.zeros_like(coil_images))


class SensitivityRefinement(nn.Module):
    """Estimate maps ``[B, C, H, W]`` from ACS data; with ``refine=True`` a U-Net refines each coil image first."""

    def __init__(self, refine: bool = True, chans: int = 8, num_pools: int = 4):
        super().__init__()
        self.unet = None
        if refine:
            from mrlearn.models.unet import Unet  # the fastMRI U-Net of the training spine

            self.unet = Unet(in_chans=2, out_chans=2, chans=chans, num_pool_layers=num_pools)

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        coil_images = acs_coil_images(kspace, mask)
        if self.unet is not None:
            b, c, h, w = coil_images.shape
            x = complex_to_channels(coil_images.reshape(b * c, h, w))
            mean = x.mean(dim=(-3, -2, -1), keepdim=True)
            std = x.std(dim=(-3, -2, -1), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            x = self.unet((x - mean) / std).to(x.dtype) * std + mean
            coil_images = channels_to_complex(x).reshape(b, c, h, w)
        return normalise_by_rss(coil_images)
