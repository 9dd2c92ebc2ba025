"""Lightning training of the qMRI parameter networks (groundtruth, MLE, self-supervised and hybrid labels).

Batches are ``(signals [B, N], gt_scaled [B, P], mle_scaled [B, P])``; scaled = parameter / scale.
``label``: ``gt``, ``mle``, ``ss`` (signal-space MSE) or ``hybrid`` (alpha * MSE(MLE) + (1 - alpha) * MSE(GT)).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

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


def train_network(signals: torch.Tensor, gt_scaled: torch.Tensor, mle_scaled: torch.Tensor, bvals: torch.Tensor,
                  scales: torch.Tensor, model: str, label: str, alpha: float = 0.5, width: int | None = None,
                  n_hidden: int = 3, optim: dict[str, Any] | None = None, seed: int = 0, max_epochs: int = 10,
                  batch_size: int = 256, val_fraction: float = 0.1, patience: int = 10,
                  accelerator: str = "cpu") -> tuple[IvimMLP, dict[str, float]]:
    """Train one network with the Lightning Trainer (deterministic for ``seed``); returns (net, metrics).

    The best weights by validation loss are restored at the end (early stopping with ``patience`` epochs).
    """
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no per-network banners
    L.seed_everything(seed, workers=True, verbose=False)
    n = signals.shape[0]
    n_val = max(1, int(round(n * val_fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    tensors = [t.float() for t in (signals, gt_scaled, mle_scaled)]
    train = TensorDataset(*[t[perm[n_val:]] for t in tensors])
    val = TensorDataset(*[t[perm[:n_val]] for t in tensors])
    module = QmriNetModule(bvals, scales, model, label, alpha, width, n_hidden, optim)
    best: dict[str, Any] = {"loss": float("inf"), "state": None, "epoch": -1}

    class _KeepBest(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            loss = float(trainer.callback_metrics.get("val_loss", float("inf")))
            if loss < best["loss"] and not trainer.sanity_checking:
                best.update(loss=loss, epoch=trainer.current_epoch,
                            state={k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})

    trainer = L.Trainer(max_epochs=max_epochs, accelerator=accelerator, devices=1, deterministic=True,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[_KeepBest(), L.pytorch.callbacks.EarlyStopping("val_loss", patience=patience)])
    gen = torch.Generator().manual_seed(seed)
    trainer.fit(module, DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
                DataLoader(val, batch_size=4096))
    if best["state"] is not None:
        module.net.load_state_dict(best["state"])
    module.net.eval()
    return module.net, {"best_val_loss": best["loss"], "best_epoch": best["epoch"], "epochs": trainer.current_epoch}
