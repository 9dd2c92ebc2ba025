"""Reconstruct-then-segment: a k-space reconstruction network, then a U-Net segmenter on its magnitude.

``ReconThenSeg(kspace, mask, sens_maps) -> ReconSegOutput`` (:mod:`mrlearn.recon_seg.parts`): ``image =
R(kspace, mask, sens_maps)`` (any registered k-space network, section ``recon``; default a small unrolled network)
and ``seg_logits = U(instance_norm(|image|))`` with ``U`` the fastMRI U-Net (``seg_chans``, ``seg_pools``,
``num_classes`` outputs). End to end, the segmentation loss also reaches ``R``; ``detach: true`` cuts that
gradient (the segmenter learns on the reconstructions, the reconstruction only from its own loss).
:meth:`segment` runs ``U`` alone on any magnitude ``[B, h, w]`` (the two-step pipeline trains it on targets:
``method.seg_input: target``). ``shared_parameters()`` is ``R`` (the only part both losses reach).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

from mrlearn import registry
from mrlearn.errors import input_error
from mrlearn.models.protocol import input_kind
from mrlearn.models.unet import Unet
from mrlearn.recon_seg.parts import ReconSegOutput, check_options, instance_norm

DEFAULT_RECON = {"name": "unrolled", "cascades": 2, "dc": "gradient", "share_weights": False, "regulariser": "resnet",
                 "chans": 8, "num_blocks": 1, "multicoil": True, "maps": "acs"}


@registry.register("model", "recon_then_seg")
class ReconThenSeg(nn.Module):
    """A reconstruction network ``recon`` (config section) followed by a segmentation U-Net (module docstring)."""

    input_kind = "kspace"

    def __init__(self, recon: dict[str, Any] | None = None, num_classes: int = 8, seg_chans: int = 16,
                 seg_pools: int = 3, detach: bool = False):
        super().__init__()
        check_options("model", num_classes=num_classes, seg_chans=seg_chans, seg_pools=seg_pools)
        section = dict(DEFAULT_RECON if recon is None else recon)
        if section.get("name") in ("recon_then_seg", "ynet", "unrolled_seg", "cross_stitch", "sluice"):
            raise input_error("model.recon.name", f"{section['name']!r} is a joint model", "name a reconstruction network, e.g. unrolled")
        self.recon = registry.build("model", section, "model.recon")
        if input_kind(self.recon) != "kspace":
            raise input_error("model.recon.name", f"{section.get('name')!r} is an image network",
                              "name a k-space network (unrolled or varnet)")
        self.num_classes, self.detach = int(num_classes), bool(detach)
        self.segmenter = Unet(in_chans=1, out_chans=num_classes, chans=seg_chans, num_pool_layers=seg_pools)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.recon.parameters()

    def segment(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Magnitude ``[B, h, w]`` (any units) -> logits ``[B, K, h, w]``."""
        return self.segmenter(instance_norm(magnitude.unsqueeze(1).float()))

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None = None) -> ReconSegOutput:
        image = self.recon(kspace, mask, sens_maps)
        magnitude = image.abs()
        return ReconSegOutput(image, self.segment(magnitude.detach() if self.detach else magnitude))
