"""``method: {name: supervised_tv, tv_weight: 1e-3}``: the supervised method with a total-variation penalty.

A method is a LightningModule built as ``factory(model, loss, cfg, **method options)``; subclassing mrlearn's
``SupervisedModule`` keeps its data path, validation, checkpoints and reconstruction, and changes only the loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mrlearn.registry import register
from mrlearn.training.supervised import SupervisedModule


@register("method", "supervised_tv")
class SupervisedTV(SupervisedModule):
    """Supervised loss + ``tv_weight`` x anisotropic total variation of the (normalised) output."""

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: Any, tv_weight: float = 1e-3):
        if tv_weight < 0:
            raise ValueError("tv_weight must be >= 0")
        super().__init__(model, loss, cfg)
        self.tv_weight = tv_weight

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        out = self.model(batch["image"])
        tv = out.diff(dim=-1).abs().mean() + out.diff(dim=-2).abs().mean()
        return self._loss(batch, out) + self.tv_weight * tv
