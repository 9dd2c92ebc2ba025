"""Y-Net (Mehta et al. 2018) for joint reconstruction and segmentation: one encoder, two decoders (hard sharing).

``YNet(kspace, mask, sens_maps) -> ReconSegOutput`` (:mod:`mrlearn.recon_seg.parts`). The input is the
zero-filled SENSE image ``x0 = A^H y / scale`` (complex as 2 channels; maps given or estimated from the ACS lines,
as the unrolled network); a shared U-Net encoder feeds a reconstruction decoder, whose 2-channel output is a
residual ``x = x0 + D_r(E(x0))``, and a segmentation decoder giving ``K`` class logits ``D_s(E(x0))``; both decoders
take the encoder's skip connections. ``shared_parameters()`` is the encoder (what gradient-based weightings combine).
"""

from __future__ import annotations

from typing import Iterator, Literal

import torch
from torch import nn

from mrlearn.physics.complex import channels_to_complex, complex_to_channels
from mrlearn.recon_seg.parts import Decoder, Encoder, ReconSegOutput, check_options, pad_to, unpad, zero_filled_start
from mrlearn.registry import register


@register("model", "ynet")
class YNet(nn.Module):
    """Shared encoder, reconstruction and segmentation decoders (``chans`` top-level channels, ``num_pools`` levels)."""

    input_kind = "kspace"

    def __init__(self, num_classes: int = 8, chans: int = 16, num_pools: int = 3, multicoil: bool = True,
                 maps: Literal["given", "acs", "espirit"] = "acs"):
        super().__init__()
        check_options("model", num_classes=num_classes, chans=chans, num_pools=num_pools)
        self.num_classes, self.num_pools, self.multicoil, self.maps = int(num_classes), int(num_pools), bool(multicoil), maps
        self.encoder = Encoder(2, chans, num_pools)
        self.recon_decoder = Decoder(2, chans, num_pools)
        self.seg_decoder = Decoder(num_classes, chans, num_pools)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.encoder.parameters()

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None = None) -> ReconSegOutput:
        x0, _, _, scale = zero_filled_start(kspace, mask, sens_maps, self.multicoil, self.maps)
        size = tuple(x0.shape[-2:])
        inp, pad = pad_to(complex_to_channels(x0), self.num_pools)
        feat, skips = self.encoder(inp)
        residual = unpad(self.recon_decoder(feat, skips), pad, size).to(x0.real.dtype)
        logits = unpad(self.seg_decoder(feat, skips), pad, size)
        return ReconSegOutput((x0 + channels_to_complex(residual)) * scale, logits)
