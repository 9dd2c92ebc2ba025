"""Greedy layer-wise training (``layerwise_greedy``, Ozturkler et al. 2021): one block at a time on the frozen output of the
earlier ones; see :mod:`mrlearn.layerwise.module` for the three methods' shared conventions.

Block i trains for at most ``epochs_per_block`` epochs; with ``block_patience`` it ends earlier, on its own plateau
(``block_patience`` validations without a gain of more than ``block_min_delta`` in ``block_monitor``, default the
checkpoint monitor val_ssim), its best-validation weights restored; the next block starts in the following epoch
with the learning rate restarted. The stage, its first epoch and the block's best weights so far are saved in
checkpoints, so a resumed run continues the same block.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mrlearn.config import ExperimentConfig
from mrlearn.engine.convergence import default_mode, improved
from mrlearn.errors import input_error
from mrlearn.layerwise.module import AdamStageModule
from mrlearn.registry import register


@register("method", "layerwise_greedy")
class GreedyModule(AdamStageModule):
    """Greedy layer-wise training, earlier blocks frozen: each block for ``epochs_per_block`` epochs, or (with
    ``block_patience``) until its own validation plateau, ``epochs_per_block`` then being the block's cap."""

    selection = "per_block_best"
    #: the blocks other than the current one get no gradient: DDP finds them (``engine.trainer.ddp_strategy``)
    ddp_unused_parameters = True

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig, epochs_per_block: int = 10,
                 lr_step_epochs: int = 10, lr_gamma: float = 0.5, block_patience: int | None = None,
                 block_min_delta: float = 0.0, block_monitor: str | None = None):
        if epochs_per_block < 1:
            raise input_error("method.epochs_per_block", f"must be >= 1, got {epochs_per_block}", "use e.g. 10")
        if block_patience is not None and not 1 <= block_patience < epochs_per_block:
            raise input_error("method.block_patience", f"must be >= 1 and below epochs_per_block ({epochs_per_block}), "
                              f"got {block_patience}", "use e.g. 8 with epochs_per_block 60, or null for a fixed budget")
        if block_min_delta < 0:
            raise input_error("method.block_min_delta", f"must be >= 0, got {block_min_delta}", "use e.g. 0.01 (dB)")
        super().__init__(model, loss, cfg, "layerwise_greedy", lr_step_epochs, lr_gamma)
        if block_monitor is not None:  # the metric each block is selected and stopped on (and best.ckpt's)
            if block_monitor not in ("val_psnr", "val_ssim", "val_nmse", "val_loss"):
                raise input_error("method.block_monitor", f"unknown metric {block_monitor!r}",
                                  "use val_psnr, val_ssim, val_nmse or val_loss")
            self.checkpoint_monitor = (block_monitor, default_mode(block_monitor))
        self.epochs_per_block, self.block_patience, self.block_min_delta = epochs_per_block, block_patience, block_min_delta
        total = self.num_blocks * epochs_per_block
        if cfg.trainer.max_epochs != total:
            raise input_error("trainer.max_epochs", f"is {cfg.trainer.max_epochs} but greedy training of {self.num_blocks} "
                              f"blocks x {epochs_per_block} epochs needs {total}", f"set trainer.max_epochs={total}")
        self._stage = 0
        self._best: tuple[int, float, dict[str, torch.Tensor]] | None = None  # (stage, score, block weights)
        self._ref: float | None = None  # the score a gain is measured from (moves only on gains > block_min_delta)
        self._since = 0  # validations of this block since its last such gain
        self.best_epoch_in_block: dict[int, int] = {}  # block -> epoch (0-based, within the block) of its best
        self.block_end: dict[int, str] = {}  # block -> "plateau" or "cap"

    def stage(self) -> int:
        return self._stage

    def _restore_best(self) -> None:
        """Put back the best-validation weights of the block whose stage just ended."""
        if self._best is not None:
            stage, _, weights = self._best
            self.model.blocks[stage].load_state_dict(weights)
            self._best = None

    def _end_stage(self, reason: str) -> None:
        """Close the current block (best weights back in place) and start the next one in the next epoch."""
        s = self._stage
        self.block_end[s] = reason
        self._restore_best()
        if s + 1 >= self.num_blocks:
            if getattr(self, "_trainer", None) is not None:
                self.trainer.should_stop = True
            return
        self._stage, self.stage_start = s + 1, int(self.current_epoch) + 1
        self._ref, self._since = None, 0

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit" or self._stage in self.block_end:
            return
        key, mode = self.checkpoint_monitor
        value = self.trainer.callback_metrics.get(key)
        if value is not None and math.isfinite(float(value)):
            s, v = self._stage, float(value)
            if improved(v, None if self._best is None else self._best[1], mode):
                self._best = (s, v, {k: t.detach().clone() for k, t in self.model.blocks[s].state_dict().items()})
                self.best_epoch_in_block[s] = int(self.current_epoch) - self.stage_start
            if improved(v, self._ref, mode, self.block_min_delta):
                self._ref, self._since = v, 0
            else:
                self._since += 1
        if int(self.current_epoch) - self.stage_start + 1 >= self.epochs_per_block:
            self._end_stage("plateau" if self.block_patience and self._since >= self.block_patience else "cap")
        elif self.block_patience is not None and self._since >= self.block_patience:
            self._end_stage("plateau")

    def block_convergence(self) -> dict[str, Any] | None:
        """Fixed budget: a block whose best validation came at its last epoch was still improving. With
        ``block_patience``: a block stopped by its epoch cap before its plateau was still improving."""
        if self.block_patience is None:
            last = self.epochs_per_block - 1
            still = [b for b, e in sorted(self.best_epoch_in_block.items()) if e >= last]
            stopped_by = "block_budget"
        else:
            still = [b for b, why in sorted(self.block_end.items()) if why != "plateau"]
            stopped_by = "block_cap" if still else "block_plateau"
        done = len(self.best_epoch_in_block) == self.num_blocks
        return {"stopped_by": stopped_by, "converged": done and not still, "blocks_still_improving": still,
                "block_epochs": self._block_epochs()}

    def _block_epochs(self) -> list[int]:
        """Validations each block ran, from the history: its epochs when ``trainer.val_every`` is 1 (the presets)."""
        counts: dict[int, int] = {}
        for entry in self.history.values():
            if "blocks" in entry:
                counts[int(entry["blocks"]) - 1] = counts.get(int(entry["blocks"]) - 1, 0) + 1
        return [counts[b] for b in sorted(counts)]

    def on_train_end(self) -> None:
        self._restore_best()

    def on_train_epoch_start(self) -> None:
        if self.block_patience is None:  # a fixed budget also advances when no validation ran
            while (self._stage not in self.block_end and self._stage + 1 < self.num_blocks
                   and int(self.current_epoch) - self.stage_start >= self.epochs_per_block):
                self._end_stage("cap")
                self.stage_start = self._stage * self.epochs_per_block
        super().on_train_epoch_start()  # the learning rate of this epoch of the block
        self._apply_stage()

    def _apply_stage(self) -> None:
        """Only the current block trains; it and the blocks before it reconstruct."""
        s = self.stage()
        self.model.freeze(s)
        for blk in self.model.blocks[s + 1:]:  # later blocks are not trained yet either
            for p in blk.parameters():
                p.requires_grad_(False)
        self.trained_blocks.fill_(s + 1)

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Loss of the current block on the frozen features of the earlier ones (computed under ``no_grad``)."""
        return self.loss_fn(self.model.stage_output(batch["image"], self.stage()), batch["target_complex"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        best = None if self._best is None else {"stage": self._best[0], "score": self._best[1], "weights": self._best[2]}
        checkpoint["mrlearn"]["greedy"] = {
            "stage": self._stage, "stage_start": self.stage_start, "ref": self._ref, "since": self._since, "best": best,
            "best_epoch_in_block": {str(k): v for k, v in self.best_epoch_in_block.items()},
            "block_end": {str(k): v for k, v in self.block_end.items()}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("mrlearn", {}).get("greedy")
        if not state:
            return
        self._stage, self.stage_start = int(state["stage"]), int(state["stage_start"])
        self._ref, self._since = state["ref"], int(state["since"])
        best = state["best"]
        self._best = None if best is None else (int(best["stage"]), float(best["score"]), dict(best["weights"]))
        self.best_epoch_in_block = {int(k): int(v) for k, v in state["best_epoch_in_block"].items()}
        self.block_end = {int(k): str(v) for k, v in state["block_end"].items()}
        self._apply_stage()  # depth and frozen blocks as the restored stage says
