"""Lightning method ``recon_seg``: joint reconstruction and segmentation from undersampled k-space.

The model is a joint k-space network (:mod:`mrlearn.recon_seg.parts`: ``model(kspace, mask, sens_maps) ->
ReconSegOutput(image, seg_logits)``); both outputs are centre-cropped (or zero-padded) to the target size.
Two task losses per batch:

* reconstruction (task 0, ``recon``): the configured ``method.loss`` on ``|image| / scale`` against
  ``target / scale`` (as ``supervised_kspace``: scale-free units);
* segmentation (task 1, ``seg``): ``method.seg_loss`` (:class:`mrlearn.seg.losses.SegLoss`: ``ce_dice``, ``ce``,
  ``dice``) on the logits against the sample's labels (-1: not labelled, ignored).

They are combined by ``method.weighting``, any weighting of :mod:`mrlearn.mtl.weighting` (``equal``, ``fixed``,
``dwa``, ``uncertainty``: one backward of ``sum_t task_loss(t, L_t)``; ``mgda``, ``pcgrad``, ``cagrad``,
``gradnorm``: manual optimisation, one forward and one backward per task through
:func:`mrlearn.mtl.step.multitask_backward` on the model's ``shared_parameters()``). ``method.stage``:
``joint`` (both losses), ``recon`` (reconstruction loss only) or ``seg`` (segmentation loss only; a
``recon_then_seg`` model's reconstruction network is frozen, and ``seg_input: target`` trains its segmenter on the
reference images instead of the reconstructions: the two-step pipeline). ``seg_eval_input: target`` (with
``seg_input: target``) also validates and applies that segmenter on the reference images (a ceiling: labels from
the fully sampled image); the image output stays the reconstruction.

Validation logs ``val_nmse``/``val_psnr``/``val_ssim`` (per volume, fastMRI) and ``val_dice`` (mean over foreground
classes of the per-class Dice averaged over volumes; :mod:`mrlearn.recon_seg.scoring`). ``reconstruct(batch)``
returns the image ``[B, h, w]`` in data units, ``segment(batch)`` the labels ``[B, h, w]`` (int64, argmax).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from mrlearn.config import ExperimentConfig
from mrlearn.errors import input_error
from mrlearn.models.protocol import require_input
from mrlearn.mtl.step import multitask_backward
from mrlearn.mtl.weighting import build_weighting
from mrlearn.physics.complex import crop_or_pad
from mrlearn.recon_seg.scoring import DiceCollector
from mrlearn.registry import register
from mrlearn.seg.losses import SegLoss
from mrlearn.training.module import NonFiniteLossError, ReconModule, _dist

TASKS = ("recon", "seg")
STAGES = ("joint", "recon", "seg")


def _labels_missing(where: Any) -> Exception:
    return input_error(where, "no 'segmentation' dataset (class labels): method recon_seg trains a segmentation",
                       "train on files with labels (e.g. `mrlearn simulate` data), or set method.stage: recon")


@register("method", "recon_seg")
class ReconSegModule(ReconModule):
    """Joint reconstruction + segmentation training (see the module docstring)."""

    keep_kspace = True
    requires_target = True

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig, seg_loss: str = "ce_dice",
                 weighting: dict[str, Any] | str | None = None, stage: Literal["joint", "recon", "seg"] = "joint",
                 seg_input: Literal["reconstruction", "target"] = "reconstruction",
                 monitor: Literal["val_ssim", "val_psnr", "val_dice"] = "val_ssim",
                 seg_eval_input: Literal["reconstruction", "target"] = "reconstruction"):
        require_input(model, "recon_seg", ("kspace",))
        if not isinstance(getattr(model, "num_classes", None), int):
            raise input_error("model.name", f"{type(model).__name__} is not a joint reconstruction-segmentation network",
                              "choose recon_then_seg, ynet, unrolled_seg, cross_stitch or sluice")
        for key, value, choices in (("stage", stage, STAGES), ("seg_input", seg_input, ("reconstruction", "target")),
                                    ("monitor", monitor, ("val_ssim", "val_psnr", "val_dice")),
                                    ("seg_eval_input", seg_eval_input, ("reconstruction", "target"))):
            if value not in choices:
                raise input_error(f"method.{key}", f"unknown value {value!r}", f"choose one of: {', '.join(choices)}")
        if seg_input == "target" and (stage != "seg" or not hasattr(model, "segment")):
            raise input_error("method.seg_input", "'target' trains a recon_then_seg segmenter alone (method.stage: seg)",
                              "set method.stage: seg with model.name: recon_then_seg, or seg_input: reconstruction")
        if seg_eval_input == "target" and seg_input != "target":
            raise input_error("method.seg_eval_input", "'target' segments the reference images, so the segmenter must "
                              "also be trained on them", "set method.seg_input: target (stage seg, recon_then_seg)")
        super().__init__(model, loss, cfg)
        self.seg_eval_input = seg_eval_input
        self.seg_loss_fn = SegLoss(seg_loss)
        self.stage, self.seg_input = stage, seg_input
        self.num_classes = int(model.num_classes)
        self.checkpoint_monitor = (monitor, "max")
        self.weighting = build_weighting(weighting, len(TASKS))
        self.hparams_weighting = weighting if weighting is not None else "equal"
        self.automatic_optimization = stage != "joint" or not self.weighting.needs_grads
        # a stage trains one task: the other task's head (and a learned weighting's parameters) get no gradient,
        # which DDP must be told (engine.trainer.ddp_strategy); joint training reaches every parameter
        self.ddp_unused_parameters = stage != "joint"
        if not self.automatic_optimization and cfg.trainer.gradient_clip_val:
            raise input_error("trainer.gradient_clip_val", f"Lightning cannot clip the manual optimisation of the "
                              f"{registry_name(weighting)} weighting", "drop trainer.gradient_clip_val, or use a loss-based weighting")
        if stage == "seg" and hasattr(model, "recon"):  # two-step pipeline: the reconstruction network stays as loaded
            for p in model.recon.parameters():
                p.requires_grad_(False)
        self._task_sum, self._task_count = [0.0, 0.0], 0
        self._dice: DiceCollector | None = None
        self._labels: torch.Tensor | None = None
        self.seg_summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ data
    def make_datamodule(self, cfg: ExperimentConfig | None = None) -> Any:
        """The standard data module (k-space kept); refuses training files without labels when they are needed."""
        from mrlearn.training.data import ReconDataModule

        dm = ReconDataModule(cfg or self.cfg, keep_kspace=True)
        if self.stage != "recon":
            for info in getattr(dm.dataset("train").slices, "volumes", []):
                if not getattr(info, "has_segmentation", False):
                    raise _labels_missing(info.path)
        return dm

    # ------------------------------------------------------------------ forward
    def outputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(|image| / scale [B, h, w], logits [B, K, h, w])`` at the target size (``seg_eval_input: target``: the
        logits of the reference image)."""
        size = tuple(batch["target"].shape[-2:])
        if self.seg_eval_input == "target":
            has = batch.get("has_target")
            if has is not None and not bool(torch.as_tensor(has).all()):
                raise input_error(f"{batch['fname'][0]}", "method.seg_eval_input: target segments the reference image, "
                                  "which this file does not have", "give files with targets (fully sampled)")
            image = self.model.recon(batch["kspace"], batch["mask"], batch.get("sens_maps"))
            logits = self.model.segment(batch["target"][:, 0].float())
            return crop_or_pad(image.abs(), size).float(), logits.float()
        out = self.model(batch["kspace"], batch["mask"], batch.get("sens_maps"))
        return crop_or_pad(out.image.abs(), size).float(), crop_or_pad(out.seg_logits, size).float()

    def reconstruct(self, batch: Any) -> torch.Tensor:
        magnitude, logits = self.outputs(batch)
        self._labels = logits.argmax(1)  # kept for the validation Dice of the same batch
        return magnitude * batch["scale"].reshape(-1, 1, 1).to(magnitude.dtype)

    def segment(self, batch: Any) -> torch.Tensor:
        """Labels ``[B, h, w]`` (int64, argmax of the logits) of a batch."""
        return self.outputs(batch)[1].argmax(1)

    def reconstruct_and_segment(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image [B, h, w] in data units, labels [B, h, w])`` from one forward pass (``mrlearn reconstruct``)."""
        image = self.reconstruct(batch)
        labels, self._labels = self._labels, None
        return image, labels

    def _recon_loss(self, batch: Any, magnitude: torch.Tensor) -> torch.Tensor:
        target = batch["target"][:, 0].float() / batch["scale"].reshape(-1, 1, 1)
        data_range = target.amax(dim=(-2, -1)) - target.amin(dim=(-2, -1))
        return self.loss_fn(magnitude.unsqueeze(1), target.unsqueeze(1), data_range)

    def _seg_loss(self, batch: Any, logits: torch.Tensor) -> torch.Tensor:
        labels = batch.get("segmentation")
        if labels is None:
            raise _labels_missing(f"{batch['fname'][0]}[slice {int(batch['slice'][0])}]")
        top = int(labels.max())
        if top >= self.num_classes:
            i = int((labels.reshape(labels.shape[0], -1).amax(1) >= self.num_classes).nonzero()[0, 0])
            raise input_error(f"{batch['fname'][i]}[slice {int(batch['slice'][i])}]", f"label {top} is outside the "
                              f"model's {self.num_classes} classes (0..{self.num_classes - 1})",
                              f"set model.num_classes: {top + 1} or more")
        return self.seg_loss_fn(logits, labels)

    def task_losses(self, batch: Any) -> list[torch.Tensor]:
        """``[L_recon, L_seg]`` of a batch (one forward pass; a stage's unused loss is a detached 0)."""
        if self.stage == "seg" and self.seg_input == "target":
            logits = self.model.segment(batch["target"][:, 0].float())
            return [logits.new_zeros(()), self._seg_loss(batch, logits)]
        magnitude, logits = self.outputs(batch)
        recon = self._recon_loss(batch, magnitude)
        seg = self._seg_loss(batch, logits) if self.stage != "recon" else logits.new_zeros(())
        if self.stage == "seg":
            recon = recon.detach()
        return [recon, seg]

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1 and not self.automatic_optimization:
            raise input_error("method.weighting", f"{registry_name(self.hparams_weighting)} runs one backward per task, "
                              "which recon_seg does not synchronise over several processes",
                              "train it on one device, or use a loss-based weighting (equal, fixed, dwa, uncertainty)")

    def training_loss(self, batch: Any) -> torch.Tensor:
        losses = self.task_losses(batch)
        if self.stage == "joint":
            total = self.weighting.task_loss(0, losses[0]) + self.weighting.task_loss(1, losses[1])
        else:
            total = losses[0] if self.stage == "recon" else losses[1]
        self._bookkeeping(batch, [float(v.detach()) for v in losses])
        return total

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        opt = self.optimizers()
        opt.zero_grad()
        cache: dict[str, list[torch.Tensor]] = {}

        def loss_of(t: int) -> torch.Tensor:
            if "losses" not in cache:
                cache["losses"] = self.task_losses(batch)
            return cache["losses"][t]

        shared = list(self.model.shared_parameters()) if hasattr(self.model, "shared_parameters") else []
        result = multitask_backward({0: lambda: loss_of(0), 1: lambda: loss_of(1)}, self.weighting, shared,
                                    backward=lambda loss: self.manual_backward(loss, retain_graph=True))
        if not torch.isfinite(result.losses).all():
            slices = ", ".join(f"{f}[{int(s)}]" for f, s in zip(batch["fname"], batch["slice"]))
            raise NonFiniteLossError(f"training: task losses {result.losses.tolist()} at step {self.global_step} "
                                     f"(batch {batch_idx}: {slices}); the run stopped; lower optim.lr")
        opt.step()
        self._bookkeeping(batch, result.losses.tolist())
        n = len(batch["fname"])
        total = float(result.losses.sum())
        self._train_sum += total * n
        self._train_count += n
        self.log("train_loss", total, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        return None

    def _bookkeeping(self, batch: Any, losses: list[float]) -> None:
        n = len(batch["fname"])
        weights = self.weighting.weights()
        for t, name in enumerate(TASKS):
            self._task_sum[t] += losses[t] * n
            self.log(f"loss/{name}", losses[t], on_step=True, on_epoch=False, batch_size=n)
            self.log(f"weight/{name}", float(weights[t]), on_step=True, on_epoch=False, batch_size=n)
        self._task_count += n

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._task_sum, self._task_count = [0.0, 0.0], 0

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # the epoch's task-loss sums: a run resumed mid-epoch completes them
        checkpoint["mrlearn"]["recon_seg"] = {"task_sum": list(self._task_sum), "task_count": int(self._task_count)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        extra = checkpoint.get("mrlearn", {}).get("recon_seg", {})
        self._task_sum = [float(v) for v in extra.get("task_sum", self._task_sum)]
        self._task_count = int(extra.get("task_count", self._task_count))

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        sums = torch.tensor([*self._task_sum, float(self._task_count)], dtype=torch.float64)
        if _dist():  # the epoch means of the global batches: every process gets the same (DWA's) loss weights
            sums = sums.to(self.device)
            torch.distributed.all_reduce(sums)
            sums = sums.cpu()
        count = float(sums[-1])
        means = [float(s) / count if count else math.nan for s in sums[:-1]]
        self.weighting.epoch_end(means)
        entry = self.history.setdefault(int(self.current_epoch), {"epoch": int(self.current_epoch)})
        for t, name in enumerate(TASKS):
            entry[f"loss/{name}"] = means[t]
            entry[f"weight/{name}"] = float(self.weighting.weights()[t])
        if not self.automatic_optimization:
            sched = self.lr_schedulers()
            if sched is not None:
                sched.step()

    # ------------------------------------------------------------------ evaluation
    def _start_eval(self, stage: str) -> None:
        super()._start_eval(stage)
        self._dice = DiceCollector(self.num_classes)

    def _eval_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        output = super()._eval_step(batch, batch_idx)
        if self._dice is not None and self._labels is not None:
            self._dice.add_batch(list(batch["fname"]), self._labels, batch.get("segmentation"))
        self._labels = None
        return output

    def _end_eval(self, prefix: str) -> dict[str, float]:
        logged = super()._end_eval(prefix)
        assert self._dice is not None
        self._dice.gather()
        self.seg_summary = self._dice.summary()
        self._dice = None
        if self.seg_summary["volumes"]:
            logged[f"{prefix}_dice"] = self.seg_summary["dice"]
            self.log(f"{prefix}_dice", self.seg_summary["dice"], prog_bar=True, sync_dist=False)
            self.last_eval[f"{prefix}_dice"] = self.seg_summary["dice"]
            for k, v in enumerate(self.seg_summary["per_class"]):
                self.last_eval[f"{prefix}_dice/{k}"] = v
        return logged


def registry_name(section: Any) -> str:
    """The name of a weighting section (``{name: mgda}`` or ``"mgda"``)."""
    return str(section.get("name") if isinstance(section, dict) else section)
