"""``method.loss: {name: l1_gradient}``: L1 of the image plus ``weight`` times L1 of its finite differences.

Called as every mrlearn loss: ``loss(output, target, data_range)`` on real ``[B, 1, h, w]`` images.
"""

from __future__ import annotations

import torch
from torch import nn

from mrlearn.registry import register


class L1Gradient(nn.Module):
    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight

    def forward(self, output: torch.Tensor, target: torch.Tensor, data_range: torch.Tensor | None = None) -> torch.Tensor:
        err = output - target
        grad = (err.diff(dim=-1).abs().mean() + err.diff(dim=-2).abs().mean()) / 2
        return err.abs().mean() + self.weight * grad


@register("loss", "l1_gradient")
def l1_gradient(weight: float = 0.5) -> nn.Module:
    """Mean absolute error plus ``weight`` x mean absolute error of horizontal and vertical differences."""
    return L1Gradient(weight)
