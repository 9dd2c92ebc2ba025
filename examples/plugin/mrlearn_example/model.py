"""``model: {name: tiny_dncnn}``: a small residual CNN (DnCNN-style: the network predicts the aliasing to remove).

Image network (``input_kind = "image"``): real ``[B, 1, H, W]`` -> ``[B, 1, H, W]``, any H, W.
"""

from __future__ import annotations

import torch
from torch import nn

from mrlearn.registry import register


@register("model", "tiny_dncnn")
class TinyDnCNN(nn.Module):
    """``depth`` 3x3 convolutions of ``chans`` channels with ReLU; output = input - predicted residual."""

    input_kind = "image"

    def __init__(self, chans: int = 16, depth: int = 4, in_chans: int = 1, out_chans: int = 1):
        super().__init__()
        if depth < 2:
            raise ValueError("depth must be at least 2")
        self.in_chans, self.out_chans = in_chans, out_chans
        layers: list[nn.Module] = [nn.Conv2d(in_chans, chans, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(chans, chans, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(chans, out_chans, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image[:, : self.out_chans] - self.body(image)
