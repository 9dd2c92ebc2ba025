"""Unrolled reconstruction with a segmentation head fed by every cascade's image.

``UnrolledSeg(kspace, mask, sens_maps) -> ReconSegOutput`` (:mod:`mrlearn.recon_seg.parts`). The reconstruction
is :class:`mrlearn.models.unrolled.UnrolledNet`'s (``x_0 = A^H y / scale``, ``cascades`` steps of a residual
regulariser and data consistency; ``image = x_K scale``). The head is a fastMRI U-Net on the cascade outputs'
magnitudes ``|x_1| .. |x_K|`` (instance-normalised each):

* ``combine: concat``: the K magnitudes are the U-Net's K input channels;
* ``combine: sum``: one U-Net (1 input channel) is applied to each magnitude and the K logit maps are summed.

So the segmentation loss reaches every cascade directly, not only through the last image. ``shared_parameters()``:
the cascades.
"""

from __future__ import annotations

from typing import Iterator, Literal

import torch
from torch import nn

from mrlearn.errors import input_error
from mrlearn.models.unet import Unet
from mrlearn.models.unrolled import Cascade, build_dc, build_regulariser
from mrlearn.recon_seg.parts import ReconSegOutput, check_options, instance_norm, zero_filled_start
from mrlearn.registry import register

COMBINE = ("concat", "sum")


@register("model", "unrolled_seg")
class UnrolledSeg(nn.Module):
    """Unrolled network (options as ``unrolled``, weights per cascade) with a U-Net head on all cascade images."""

    input_kind = "kspace"

    def __init__(self, num_classes: int = 8, cascades: int = 3, dc: Literal["gradient", "cg"] = "gradient",
                 regulariser: Literal["resnet", "unet"] = "resnet", chans: int = 8, num_blocks: int = 1,
                 num_pools: int = 2, multicoil: bool = True, maps: Literal["given", "acs", "espirit"] = "acs",
                 seg_chans: int = 16, seg_pools: int = 3, combine: Literal["concat", "sum"] = "concat"):
        super().__init__()
        check_options("model", num_classes=num_classes, cascades=cascades, chans=chans, seg_chans=seg_chans,
                      seg_pools=seg_pools)
        if combine not in COMBINE:
            raise input_error("model.combine", f"unknown value {combine!r}", f"choose one of: {', '.join(COMBINE)}")
        self.num_classes, self.multicoil, self.maps, self.combine = int(num_classes), bool(multicoil), maps, combine
        self.cascades = nn.ModuleList(Cascade(build_regulariser(regulariser, chans, num_blocks, num_pools), build_dc(dc))
                                      for _ in range(cascades))
        self.head = Unet(in_chans=cascades if combine == "concat" else 1, out_chans=num_classes, chans=seg_chans,
                         num_pool_layers=seg_pools)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.cascades.parameters()

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None = None) -> ReconSegOutput:
        x, y, maps, scale = zero_filled_start(kspace, mask, sens_maps, self.multicoil, self.maps)
        magnitudes = []
        for step in self.cascades:
            x = step(x, y, mask, maps)
            magnitudes.append(instance_norm(x.abs().unsqueeze(1).float()))
        if self.combine == "concat":
            logits = self.head(torch.cat(magnitudes, dim=1))
        else:
            logits = torch.stack([self.head(m) for m in magnitudes]).sum(0)
        return ReconSegOutput(x * scale, logits)
