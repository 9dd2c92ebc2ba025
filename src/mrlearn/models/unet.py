"""The fastMRI baseline U-Net (Ronneberger et al. 2015 as configured by Zbontar et al. 2018; REFERENCE section 5).

Input/output ``[B, in_chans, H, W]`` -> ``[B, out_chans, H, W]`` real. Each level is two 3x3 convolutions
(no bias) each followed by instance norm and LeakyReLU(0.2) (dropout optional); downsampling is 2x2 average
pooling by default, as fastMRI's code (``fastmri/models/unet.py``) does, so the default network is fastMRI's
(``pool="max"``: max pooling, as drawn in the U-Net paper, a different network), upsampling a 2x2 transpose
convolution (+ instance norm, LeakyReLU) whose output is concatenated with the skip connection of the same
level. The last level ends with a 1x1 convolution (with bias) to ``out_chans``.
Channels double at every pooling level (``chans``, ``2 chans``, ...). Any ``H, W`` works: the input is
zero-padded to a multiple of ``2 ** num_pool_layers`` (centred) and the output cropped back.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from mrlearn.registry import register


class ConvBlock(nn.Module):
    """Two (3x3 conv -> instance norm -> LeakyReLU(0.2) -> dropout) layers."""

    def __init__(self, in_chans: int, out_chans: int, drop_prob: float):
        super().__init__()
        layers: list[nn.Module] = []
        for cin in (in_chans, out_chans):
            layers += [nn.Conv2d(cin, out_chans, kernel_size=3, padding=1, bias=False), nn.InstanceNorm2d(out_chans),
                       nn.LeakyReLU(0.2, inplace=True)]
            if drop_prob > 0:
                layers.append(nn.Dropout2d(drop_prob))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class UpBlock(nn.Module):
    """2x2 transpose convolution (stride 2) -> instance norm -> LeakyReLU(0.2): doubles H and W."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.layers = nn.Sequential(nn.ConvTranspose2d(in_chans, out_chans, kernel_size=2, stride=2, bias=False),
                                    nn.InstanceNorm2d(out_chans), nn.LeakyReLU(0.2, inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register("model", "unet")
class Unet(nn.Module):
    """fastMRI U-Net: ``num_pool_layers`` poolings, ``chans`` channels at the top level (seed 002: 32 and 4)."""

    def __init__(self, in_chans: int = 1, out_chans: int = 1, chans: int = 32, num_pool_layers: int = 4,
                 drop_prob: float = 0.0, pool: Literal["avg", "max"] = "avg"):
        super().__init__()
        if min(in_chans, out_chans, chans, num_pool_layers) < 1:
            raise ValueError("in_chans, out_chans, chans and num_pool_layers must be at least 1")
        if pool not in ("max", "avg"):
            raise ValueError("pool must be 'avg' (fastMRI's code) or 'max'")
        self.pool = F.max_pool2d if pool == "max" else F.avg_pool2d
        self.in_chans, self.out_chans, self.num_pool_layers = in_chans, out_chans, num_pool_layers
        self.down = nn.ModuleList([ConvBlock(in_chans, chans, drop_prob)])
        ch = chans
        for _ in range(num_pool_layers - 1):
            self.down.append(ConvBlock(ch, ch * 2, drop_prob))
            ch *= 2
        self.bottleneck = ConvBlock(ch, ch * 2, drop_prob)
        self.up_transpose = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for level in range(num_pool_layers):
            self.up_transpose.append(UpBlock(ch * 2, ch))
            if level < num_pool_layers - 1:
                self.up_conv.append(ConvBlock(ch * 2, ch, drop_prob))
            else:  # top level: conv block then the 1x1 output convolution
                self.up_conv.append(nn.Sequential(ConvBlock(ch * 2, ch, drop_prob),
                                                  nn.Conv2d(ch, out_chans, kernel_size=1, stride=1)))
            ch //= 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"Unet expects [B, {self.in_chans}, H, W], got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = 2 ** self.num_pool_layers
        ph, pw = (-h) % m, (-w) % m
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        out = F.pad(x, pad) if (ph or pw) else x
        skips = []
        for block in self.down:
            out = block(out)
            skips.append(out)
            out = self.pool(out, kernel_size=2, stride=2)
        out = self.bottleneck(out)
        for up, conv in zip(self.up_transpose, self.up_conv):
            out = conv(torch.cat([up(out), skips.pop()], dim=1))
        if ph or pw:
            out = out[..., pad[2] : pad[2] + h, pad[0] : pad[0] + w]
        return out
