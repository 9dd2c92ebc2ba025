"""Atomic checkpoints (``last.ckpt`` and ``best.ckpt``) and safe loading with ``weights_only=True``.

:class:`AtomicCheckpoint` saves ``checkpoints/last.ckpt`` every ``every_n_steps`` optimizer steps (0: never
mid-epoch) and after every validation, and ``checkpoints/best.ckpt`` when the monitored validation metric
improves. Each file is written by Lightning to ``<name>.tmp`` and moved into place with ``os.replace`` by rank 0,
so a run killed at any moment leaves the previous checkpoint intact. Checkpoints contain only tensors and plain
Python types and load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

from mrlearn.errors import input_error


class AtomicCheckpoint(Checkpoint):
    """Step and validation checkpoints written atomically; tracks the best ``monitor`` value (``mode`` max/min)."""

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0, monitor: str = "val_ssim", mode: str = "max"):
        super().__init__()
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self.monitor, self.mode = monitor, mode
        self.best_score: float | None = None
        self.best_path: str | None = None
        self._last_step_saved = -1

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _save(self, trainer: L.Trainer, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(tmp), weights_only=False)  # collective; rank 0 writes
        if trainer.is_global_zero:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        trainer.strategy.barrier("mrlearn_checkpoint")

    def save_last(self, trainer: L.Trainer) -> None:
        self._save(trainer, self.last_path)
        self._last_step_saved = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0 and trainer.global_step != self._last_step_saved:
            self.save_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is not None:
            value = float(score)
            better = self.best_score is None or (value > self.best_score if self.mode == "max" else value < self.best_score)
            if math.isfinite(value) and better:
                self.best_score = value
                self.best_path = str(self.dirpath / "best.ckpt")
                self._save(trainer, self.dirpath / "best.ckpt")
        self.save_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step_saved:
            self.save_last(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_path": self.best_path, "monitor": self.monitor, "mode": self.mode}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_path = state_dict.get("best_path")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on CPU with one-line errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "checkpoint not found", "give the path of a .ckpt file (runs/<name>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad file for the user
        raise input_error(path, f"cannot load checkpoint ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})",
                          "use a checkpoint written by mrlearn train") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise input_error(path, "not an mrlearn/Lightning checkpoint (no state_dict)", "use a checkpoint written by mrlearn train")
    return ckpt


def load_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: str | Path) -> None:
    """Load ``state_dict`` strictly; a mismatch is a one-line error naming the first differing keys/shapes."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch: {', '.join(shapes[:2])}")
        if missing:
            parts.append(f"missing {len(missing)} weights (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights (e.g. {unexpected[0]})")
        raise input_error(where, f"checkpoint does not fit the model: {'; '.join(parts)}",
                          "use the config the checkpoint was trained with (its config.yaml)")
    module.load_state_dict(state_dict, strict=True)
