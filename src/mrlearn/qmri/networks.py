"""Parameter-estimation networks and their losses (plain torch, no Lightning).

``IvimMLP`` (Epstein et al. 2022): signals ``[B, N]`` -> hidden layers of width ``N`` (default 3 of them) with
ELU -> ``P`` outputs. Outputs are *scaled* parameters theta / scale (one scale per parameter, e.g. the upper end of
the training range) so that each parameter weighs alike in an MSE. A wider variant sets ``width`` (e.g. 4 N).

Output layer: with ``bounds = (lower, upper)`` (scaled units, one pair per parameter) the last layer's ``z`` maps to
``lower + (upper - lower) * sigmoid(z)``, so every output lies in ``[lower, upper]`` whatever the input (the
``sigmoid`` output, used by ``mrlearn qmri train``); without, it is ``abs(z)`` (Epstein et al.'s output, kept for the
label study and for networks saved before the bounded output existed): non-negative but unbounded above.
Inputs are clamped to ``[-INPUT_LIMIT, INPUT_LIMIT]`` (normalised signals are about 0-2, so only absurd inputs are
touched) to keep every activation finite; a NaN input still gives NaN.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

INPUT_LIMIT = 1e4


class IvimMLP(nn.Module):
    """MLP mapping signals ``[B, N]`` to scaled parameters ``[B, P]``: in ``[lower, upper]`` (``bounds`` given,
    ``output == "sigmoid"``) or non-negative through abs() (``output == "abs"``)."""

    def __init__(self, n_inputs: int, n_params: int = 4, width: int | None = None, n_hidden: int = 3,
                 bounds: tuple[Sequence[float], Sequence[float]] | None = None):
        super().__init__()
        self.output = "abs"
        if bounds is not None:
            lower = torch.as_tensor(bounds[0], dtype=torch.float32).detach().clone().reshape(-1)
            upper = torch.as_tensor(bounds[1], dtype=torch.float32).detach().clone().reshape(-1)
            if lower.numel() != n_params or upper.numel() != n_params:
                raise ValueError(f"bounds need {n_params} lower and upper values")
            if not (torch.isfinite(lower).all() and torch.isfinite(upper).all() and (upper > lower).all()):
                raise ValueError("bounds need finite lower < upper")
            self.register_buffer("lower", lower)
            self.register_buffer("upper", upper)
            self.output = "sigmoid"
        w = int(width or n_inputs)
        layers: list[nn.Module] = []
        d = n_inputs
        for _ in range(n_hidden):
            layers += [nn.Linear(d, w), nn.ELU()]
            d = w
        layers.append(nn.Linear(d, n_params))
        self.net = nn.Sequential(*layers)

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        z = self.net(signals.clamp(-INPUT_LIMIT, INPUT_LIMIT))
        if self.output == "abs":
            return z.abs()
        out = self.lower + (self.upper - self.lower) * torch.sigmoid(z)
        return torch.minimum(torch.maximum(out, self.lower), self.upper)  # float rounding of lower + width * 1


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
