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

``stability`` (an :class:`~mrlearn.qmri.stability.EstimateStability`) with ``stability_signals [V, N]`` (a fixed
validation set): after every validation the network estimates those signals (physical units: output x scales)
and logs ``val_estimate_moves`` (the stopping series) and ``val_estimate_change`` (see :mod:`mrlearn.qmri.stability`);
every process computes them on the same signals, so every rank takes the same decision. ``lr_plateau`` (a
:class:`~mrlearn.engine.plateau.Plateau` on ``val_loss`` that never stops) halves the learning rates on each of its
cuts: under stability stopping the rate still decays on the loss plateau, so the SGD jitter of the estimates shrinks
until they can settle (the stopping series counts moves of the estimates, which a jitter above the tolerance would
keep making at a constant rate).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import lightning as L
import torch

from mrlearn import registry
from mrlearn.engine.plateau import Plateau
from mrlearn.qmri.networks import IvimMLP, hybrid_loss, self_supervised_loss, supervised_loss
from mrlearn.qmri.signal import get_model
from mrlearn.qmri.stability import CHANGE, MONITOR, EstimateStability


class QmriNetModule(L.LightningModule):
    """Wraps :class:`IvimMLP` with the loss chosen by ``label``; optimizer from the config's ``optim`` section."""

    def __init__(self, bvals: torch.Tensor, scales: torch.Tensor, model: str, label: str, alpha: float = 0.5,
                 width: int | None = None, n_hidden: int = 3, optim: dict[str, Any] | None = None,
                 out_bounds: tuple[Sequence[float], Sequence[float]] | None = None,
                 stability: EstimateStability | None = None, stability_signals: torch.Tensor | None = None,
                 lr_plateau: Plateau | None = None):
        super().__init__()
        self.lr_plateau = lr_plateau
        if (stability is None) != (stability_signals is None):
            raise ValueError("stability and stability_signals go together")
        self.stability = stability
        self._stability_signals = None if stability_signals is None else stability_signals.float()
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
        val_loss = float(total[0] / total[1].clamp_min(1))
        self.log("val_loss", val_loss, on_step=False, on_epoch=True, prog_bar=False)
        if self.lr_plateau is not None and not self.trainer.sanity_checking and self.lr_plateau.push(val_loss) == "cut":
            for opt in self.trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] = group["lr"] * 0.5
        if self.stability is not None and not self.trainer.sanity_checking:
            with torch.no_grad():
                est = self.net(self._stability_signals.to(self.device)) * self.scales
            moves, change = self.stability.push(est)
            self.log(MONITOR, float(moves), on_step=False, on_epoch=True, prog_bar=False)
            if math.isfinite(change):
                self.log(CHANGE, change, on_step=False, on_epoch=True, prog_bar=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.stability is not None:
            checkpoint["qmri_stability"] = self.stability.state_dict()
        if self.lr_plateau is not None:
            checkpoint["qmri_lr_plateau"] = self.lr_plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.stability is not None and "qmri_stability" in checkpoint:
            self.stability.load_state_dict(checkpoint["qmri_stability"])
        if self.lr_plateau is not None and "qmri_lr_plateau" in checkpoint:
            self.lr_plateau.load_state_dict(checkpoint["qmri_lr_plateau"])

    def configure_optimizers(self):
        return registry.build("optimizer", self.optim_section, "optim", params=self.parameters())
