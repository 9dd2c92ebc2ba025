"""Training losses by name (registry kind ``loss``).

Every loss is an ``nn.Module`` called as ``loss(output, target, data_range)`` on ``[B, 1, h, w]`` real images;
``data_range`` ``[B]`` is only used by SSIM (the supervised module passes the per-sample target range in the
normalised units the network sees). l1/l2 are means over pixels (as ``F.l1_loss`` / ``F.mse_loss``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mrlearn.registry import register


class _PixelLoss(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, output: torch.Tensor, target: torch.Tensor, data_range: torch.Tensor | None = None) -> torch.Tensor:
        return F.l1_loss(output, target) if self.kind == "l1" else F.mse_loss(output, target)


@register("loss", "l1")
def l1() -> nn.Module:
    """Mean absolute error (Zerilli & Lodh's training loss)."""
    return _PixelLoss("l1")


@register("loss", "l2")
def l2() -> nn.Module:
    """Mean squared error."""
    return _PixelLoss("l2")


class SSIMLossAdapter(nn.Module):
    """``1 - SSIM`` (fastMRI SSIM: 7 x 7 uniform window, K1 0.01, K2 0.03) from ``evaluation.metrics.SSIMLoss``."""

    def __init__(self, win_size: int = 7):
        super().__init__()
        from mrlearn.evaluation.metrics import SSIMLoss

        self.inner = SSIMLoss(win_size=win_size)

    def forward(self, output: torch.Tensor, target: torch.Tensor, data_range: torch.Tensor | None = None) -> torch.Tensor:
        if data_range is None:
            data_range = target.amax(dim=(-3, -2, -1)) - target.amin(dim=(-3, -2, -1))
        return self.inner(output, target, data_range)


@register("loss", "ssim")
def ssim(win_size: int = 7) -> nn.Module:
    """Structural dissimilarity ``1 - SSIM``."""
    return SSIMLossAdapter(win_size)
