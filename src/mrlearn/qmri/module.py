"""The LightningModule of the qMRI parameter networks (groundtruth, MLE, self-supervised and hybrid labels).

Trained by :func:`mrlearn.qmri.train.train_network` on the engine's Trainer.

``val_loss`` is the mean loss over every validation signal: each process sums ``loss x rows`` over its share
(:class:`~mrlearn.qmri.sharding.SignalBatches`), the sums and row counts are added over processes (DDP) and rank 0's
quotient is broadcast, so every rank logs the same number (and takes the same early-stopping decision) and it equals
the one-process value up to float summation order.

Batches are ``(signals [B, N], gt_scaled [B, P], mle_scaled [B, P])``; scaled = parameter / scale.
``label``: ``gt``, ``mle``, ``ss`` (signal-space MSE) or ``hybrid`` (alpha * MSE(MLE) + (1 - alpha) * MSE(GT)).
``out_bounds``: ``(lower, upper)`` per parameter in its physical units (see :func:`mrlearn.qmri.ranges.output_bounds`)
for the bounded ``sigmoid`` output of :class:`~mrlearn.qmri.networks.IvimMLP`; None keeps the ``abs`` output.
"""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
import torch

from mrlearn import registry
from mrlearn.qmri.networks import IvimMLP, hybrid_loss, self_supervised_loss, supervised_loss
from mrlearn.qmri.signal import get_model


class QmriNetModule(L.LightningModule):
    """Wraps :class:`IvimMLP` with the loss chosen by ``label``; optimizer from the config's ``optim`` section."""

    def __init__(self, bvals: torch.Tensor, scales: torch.Tensor, model: str, label: str, alpha: float = 0.5,
                 width: int | None = None, n_hidden: int = 3, optim: dict[str, Any] | None = None,
                 out_bounds: tuple[Sequence[float], Sequence[float]] | None = None):
        super().__init__()
        if label not in ("gt", "mle", "ss", "hybrid"):
            raise ValueError(f"unknown label {label!r}")
        scaled = None
        if out_bounds is not None:
            s = scales.double().cpu()
            scaled = (torch.as_tensor(out_bounds[0], dtype=torch.float64) / s,
                      torch.as_tensor(out_bounds[1], dtype=torch.float64) / s)
        self.net = IvimMLP(int(bvals.numel()), int(scales.numel()), width, n_hidden, bounds=scaled)
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
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=int(batch[0].shape[0]))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros(2, dtype=torch.float64, device=self.device)  # [sum of loss x rows, rows]

    def validation_step(self, batch, batch_idx):
        rows = int(batch[0].shape[0])
        loss = self._loss(batch)
        self._val_sum += torch.stack([loss.detach().double() * rows, loss.new_tensor(rows, dtype=torch.float64)])

    def on_validation_epoch_end(self) -> None:
        total = self._val_sum
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total.clone(), reduce_op="sum")
            total = self.trainer.strategy.broadcast(total, src=0)
        self.log("val_loss", float(total[0] / total[1].clamp_min(1)), on_step=False, on_epoch=True, prog_bar=False)

    def configure_optimizers(self):
        return registry.build("optimizer", self.optim_section, "optim", params=self.parameters())
