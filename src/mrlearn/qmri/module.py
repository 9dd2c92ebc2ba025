"""The LightningModule of the qMRI parameter networks (groundtruth, MLE, self-supervised and hybrid labels).

Trained by :func:`mrlearn.qmri.train.train_network` on the engine's Trainer.

Batches are ``(signals [B, N], gt_scaled [B, P], mle_scaled [B, P])``; scaled = parameter / scale.
``label``: ``gt``, ``mle``, ``ss`` (signal-space MSE) or ``hybrid`` (alpha * MSE(MLE) + (1 - alpha) * MSE(GT)).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from mrlearn import registry
from mrlearn.qmri.networks import IvimMLP, hybrid_loss, self_supervised_loss, supervised_loss
from mrlearn.qmri.signal import get_model


class QmriNetModule(L.LightningModule):
    """Wraps :class:`IvimMLP` with the loss chosen by ``label``; optimizer from the config's ``optim`` section."""

    def __init__(self, bvals: torch.Tensor, scales: torch.Tensor, model: str, label: str, alpha: float = 0.5,
                 width: int | None = None, n_hidden: int = 3, optim: dict[str, Any] | None = None):
        super().__init__()
        if label not in ("gt", "mle", "ss", "hybrid"):
            raise ValueError(f"unknown label {label!r}")
        self.net = IvimMLP(int(bvals.numel()), int(scales.numel()), width, n_hidden)
        self.register_buffer("bvals", bvals.float())
        self.register_buffer("scales", scales.float())
        self.model_fn, _ = get_model(model)
        self.label, self.alpha = label, float(alpha)
        self.optim_section = optim or {"name": "adam", "lr": 1e-3}

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        return self.net(signals)

    def _loss(self, batch) -> torch.Tensor:
        signals, gt, mle = batch
        pred = self.net(signals)
        if self.label == "gt":
            return supervised_loss(pred, gt)
        if self.label == "mle":
            return supervised_loss(pred, mle)
        if self.label == "hybrid":
            return hybrid_loss(pred, mle, gt, self.alpha)
        return self_supervised_loss(pred, signals, self.scales, self.model_fn, self.bvals)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch), on_step=False, on_epoch=True, prog_bar=False)

    def configure_optimizers(self):
        return registry.build("optimizer", self.optim_section, "optim", params=self.parameters())
