"""The SSDU ResNet regulariser (Yaman et al. 2020).

Real ``[B, in_chans, H, W]`` -> real ``[B, out_chans, H, W]`` (complex images as 2 channels, any H, W):
first 3x3 conv, ``num_blocks`` residual blocks (3x3 conv - ReLU - 3x3 conv, block output scaled by
``res_scale`` = 0.1 and added to its input), a long skip from the first conv's output, last 3x3 conv.
The published network: 64 channels, 15 blocks. No normalisation layers; inputs are expected at unit-ish scale
(the unrolled network normalises each slice before calling it).
"""

from __future__ import annotations

import torch
from torch import nn

from mrlearn.registry import register


class ResidualBlock(nn.Module):
    """``x + res_scale * conv(relu(conv(x)))`` with 3x3 convolutions at constant width."""

    def __init__(self, chans: int, res_scale: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(chans, chans, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(chans, chans, kernel_size=3, padding=1)
        self.res_scale = float(res_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(torch.relu(self.conv1(x)))


@register("model", "resnet")
class ResNet(nn.Module):
    """SSDU ResNet: conv -> ``num_blocks`` x :class:`ResidualBlock` (+ long skip) -> conv (an image-domain model too)."""

    input_kind = "image"  # model-input protocol (models.protocol)

    def __init__(self, in_chans: int = 2, out_chans: int = 2, chans: int = 64, num_blocks: int = 15,
                 res_scale: float = 0.1):
        super().__init__()
        if in_chans < 1 or out_chans < 1 or chans < 1 or num_blocks < 0:
            raise ValueError("ResNet: in_chans, out_chans, chans must be >= 1 and num_blocks >= 0")
        self.head = nn.Conv2d(in_chans, chans, kernel_size=3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(chans, res_scale) for _ in range(num_blocks)))
        self.tail = nn.Conv2d(chans, out_chans, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> ``[B, out_chans, H, W]``."""
        h = self.head(x)
        return self.tail(self.blocks(h) + h)
