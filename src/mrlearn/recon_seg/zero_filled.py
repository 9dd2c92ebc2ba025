"""Model ``zero_filled``: the zero-filled image as a parameter-free k-space "network" (no Lightning).

``ZeroFilled(kspace [B, C, H, W] complex, mask, sens_maps) -> [B, H, W]``: the root-sum-of-squares of the
zero-filled coil images (:func:`mrlearn.recon.zero_filled.zero_filled_rss`; the maps are not used), returned as a
complex tensor with zero imaginary part so it fits wherever a k-space network's complex image is expected. Units:
those of the k-space (the RSS of the fully sampled k-space is the fastMRI target). It has no parameters: as the
``recon`` section of ``recon_then_seg`` it makes a segmenter of the zero-filled magnitude (nothing is trained
but the segmenter).
"""

from __future__ import annotations

import torch
from torch import nn

from mrlearn.recon.zero_filled import zero_filled_rss
from mrlearn.registry import register


@register("model", "zero_filled")
class ZeroFilled(nn.Module):
    """RSS of the zero-filled coil images (module docstring); no parameters."""

    input_kind = "kspace"

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None = None) -> torch.Tensor:
        return torch.complex(zero_filled_rss(kspace, mask), torch.zeros((), dtype=kspace.real.dtype,
                                                                         device=kspace.device))
