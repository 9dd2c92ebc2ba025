"""Parameter-estimation networks and their losses (plain torch, no Lightning).

``IvimMLP`` (Epstein et al. 2022): signals ``[B, N]`` -> hidden layers of width ``N`` (default 3 of them) with
ELU -> ``P`` outputs passed through ``abs()``. Outputs are *scaled* parameters theta / scale (one scale per
parameter, e.g. the upper end of the training range) so that each parameter weighs alike in an MSE.
A wider variant sets ``width`` (e.g. 4 N).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class IvimMLP(nn.Module):
    """MLP mapping signals ``[B, N]`` to scaled parameters ``[B, P]`` (non-negative through abs())."""

    def __init__(self, n_inputs: int, n_params: int = 4, width: int | None = None, n_hidden: int = 3):
        super().__init__()
        w = int(width or n_inputs)
        layers: list[nn.Module] = []
        d = n_inputs
        for _ in range(n_hidden):
            layers += [nn.Linear(d, w), nn.ELU()]
            d = w
        layers.append(nn.Linear(d, n_params))
        self.net = nn.Sequential(*layers)

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        return self.net(signals).abs()


def supervised_loss(pred_scaled: torch.Tensor, label_scaled: torch.Tensor) -> torch.Tensor:
    """MSE between scaled predicted and scaled label parameters (mean over batch and parameters)."""
    return torch.mean((pred_scaled - label_scaled) ** 2)


def hybrid_loss(pred_scaled: torch.Tensor, mle_scaled: torch.Tensor, gt_scaled: torch.Tensor,
                alpha: float) -> torch.Tensor:
    """alpha * MSE(pred, MLE label) + (1 - alpha) * MSE(pred, groundtruth label)."""
    return alpha * supervised_loss(pred_scaled, mle_scaled) + (1 - alpha) * supervised_loss(pred_scaled, gt_scaled)


def self_supervised_loss(pred_scaled: torch.Tensor, signals: torch.Tensor, scales: torch.Tensor,
                         model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         bvals: torch.Tensor) -> torch.Tensor:
    """MSE between the model signal of the predicted parameters and the noisy input signal."""
    return torch.mean((model_fn(pred_scaled * scales, bvals) - signals) ** 2)
