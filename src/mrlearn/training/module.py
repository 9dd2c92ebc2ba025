"""Base LightningModule for reconstruction methods: optimizers, NaN guard, per-volume validation, images, history.

A method subclasses :class:`ReconModule` and implements :meth:`ReconModule.training_loss` (the loss of a batch)
and :meth:`ReconModule.reconstruct` (batch -> ``[B, h, w]`` images in data units); everything else is shared:

* optimizer / scheduler from the config's ``optim`` / ``scheduler`` sections (registry), schedulers per epoch;
* a non-finite loss stops the run with :class:`NonFiniteLossError` naming the step, the batch and its slices
  (checked on all ranks together, so DDP processes stop together); the run folder completes the message with the
  checkpoints that remain (non-finite weights are never saved). NaN/Inf in a batch's target or input is a data
  problem and is reported as one, naming the file and slice;
* validation/test metrics per volume (fastMRI NMSE/PSNR/SSIM) gathered across DDP ranks, logged as
  ``val_nmse``/``val_psnr``/``val_ssim`` (means over volumes) and ``val_loss``; per-volume values are kept in
  ``self.volume_results``;
* a TensorBoard image grid ``target | input | output | |error|`` of the first validation slice;
* ``self.history``: one entry per epoch (train_loss, val metrics) saved in checkpoints, so a resumed run's
  curves equal an uninterrupted run's.
Class attribute ``keep_kspace`` tells the data module to keep masked k-space, mask and scale in samples.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from mrlearn import registry
from mrlearn.config import ExperimentConfig, config_to_dict
from mrlearn.errors import NonFiniteError, input_error
from mrlearn.evaluation.scoring import VolumeCollector, gather_volume_metrics, summarise_volumes


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN or infinite."""


def non_finite_inputs(batch: Any) -> str | None:
    """``"<file>[slice <i>]: the <field> holds NaN/Inf"`` for the first sample of ``batch`` whose target or input
    (image, k-space) is not finite, else None."""
    for key in ("target", "image", "kspace"):
        value = batch.get(key) if hasattr(batch, "get") else None
        if not torch.is_tensor(value):
            continue
        finite = torch.isfinite(value.detach()).reshape(value.shape[0], -1).all(dim=1)
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0, 0])
            what = {"target": "target (reference image)", "image": "input image", "kspace": "k-space"}[key]
            return f"{batch['fname'][i]}[slice {int(batch['slice'][i])}]: the {what} holds NaN/Inf"
    return None


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


class ReconModule(L.LightningModule):
    """Shared engine of every reconstruction method (see the module docstring)."""

    keep_kspace: bool = False
    #: whether training needs reference images (supervised methods); files without one are refused before a fit
    requires_target: bool = False
    #: (metric, "max" | "min") that picks ``best.ckpt``; self-supervised methods use their validation loss
    checkpoint_monitor: tuple[str, str] = ("val_ssim", "max")

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig):
        super().__init__()
        self.model = model
        self.loss_fn = loss
        self.cfg = cfg
        self.history: dict[int, dict[str, float]] = {}
        self._train_sum, self._train_count = 0.0, 0
        self.volume_results: dict[str, dict[str, float]] = {}
        self._collector: VolumeCollector | None = None
        self._val_loss_sum, self._val_loss_count = 0.0, 0
        self.last_eval: dict[str, float] = {}  # metrics of the latest validation/test (means and stds)

    # ------------------------------------------------------------------ to implement
    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def reconstruct(self, batch: dict[str, Any]) -> torch.Tensor:
        """Batch -> reconstructed magnitude images ``[B, h, w]`` in data units."""
        raise NotImplementedError

    def eval_loss(self, batch: dict[str, Any], output: torch.Tensor) -> torch.Tensor | None:
        """Validation loss of a batch given :meth:`reconstruct`'s output (None: not logged)."""
        return None

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        opt = registry.build("optimizer", self.cfg.optim, "optim", params=self.parameters())
        if not self.cfg.scheduler:
            return opt
        sched = registry.build("scheduler", self.cfg.scheduler, "scheduler", optimizer=opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def on_train_epoch_start(self) -> None:  # not called when resuming mid-epoch: the restored sums stay
        self._train_sum, self._train_count = 0.0, 0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # the rate this epoch trains with (epoch schedulers step before on_train_epoch_end reads the history)
        groups = self.trainer.optimizers[0].param_groups if self.trainer.optimizers else []
        self._epoch_lr = float(groups[0]["lr"]) if groups else math.nan

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=loss.device)
        if _dist():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bad.item() > 0:
            data_problem = non_finite_inputs(batch)
            if data_problem is not None:
                raise input_error(data_problem, "a data problem, not a training one",
                                  "fix or remove that file (or slice) and start the run again")
            slices = ", ".join(f"{f}[{int(s)}]" for f, s in zip(batch["fname"], batch["slice"]))
            raise NonFiniteLossError(
                f"training: loss is {float(loss.detach())} at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}: {slices}); the run stopped; lower optim.lr or set trainer.gradient_clip_val")
        self._train_sum += float(loss.detach()) * len(batch["fname"])
        self._train_count += len(batch["fname"])
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=len(batch["fname"]))
        return loss

    def on_train_epoch_end(self) -> None:
        total = torch.tensor([self._train_sum, float(self._train_count)], dtype=torch.float64)
        if _dist():
            total = total.to(self.device)
            torch.distributed.all_reduce(total)
        if total[1] > 0:
            entry = self.history.setdefault(int(self.current_epoch), {"epoch": int(self.current_epoch)})
            entry["train_loss"] = float(total[0] / total[1])
            entry["step"] = int(self.global_step)
            entry["lr"] = getattr(self, "_epoch_lr", math.nan)

    # ------------------------------------------------------------------ evaluation
    def _expected(self, stage: str) -> dict[str, int]:
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        sampler = getattr(loaders, "sampler", None)
        return dict(getattr(sampler, "expected", {}) or {})

    def _start_eval(self, stage: str) -> None:
        self._collector = VolumeCollector(self._expected(stage))
        self._val_loss_sum, self._val_loss_count = 0.0, 0

    def on_validation_epoch_start(self) -> None:
        self._start_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval("test")

    def _eval_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        data_problem = non_finite_inputs(batch)
        if data_problem is not None:
            raise input_error(data_problem, "a data problem: metrics would be NaN", "fix or remove that file (or slice)")
        output = self.reconstruct(batch).float()
        loss = self.eval_loss(batch, output)
        if loss is not None:
            self._val_loss_sum += float(loss) * len(batch["fname"])
            self._val_loss_count += len(batch["fname"])
        target = batch["target"][:, 0].float()
        assert self._collector is not None
        for i, (fname, sl) in enumerate(zip(batch["fname"], batch["slice"])):
            if bool(batch["has_target"][i]):
                self._collector.add(fname, int(sl), output[i].cpu().numpy(), target[i].cpu().numpy())
        if batch_idx == 0 and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self._log_images(batch, output)
        return output

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx)

    def _end_eval(self, prefix: str) -> dict[str, float]:
        assert self._collector is not None
        results, losses = gather_volume_metrics(self._collector.finish(), (self._val_loss_sum, self._val_loss_count))
        self.volume_results = results
        summary = summarise_volumes(results)
        loss_sum, loss_count = sum(s for s, _ in losses), sum(c for _, c in losses)
        logged = {f"{prefix}_{k}": v for k, v in summary.items() if not k.endswith("_std")}
        if loss_count:
            logged[f"{prefix}_loss"] = loss_sum / loss_count
        for key, value in logged.items():  # identical on every rank: no reduction needed
            self.log(key, value, prog_bar=key.endswith(("ssim", "psnr")), sync_dist=False)
        self._collector = None
        self.last_eval = {**logged, **{f"{prefix}_{k}": v for k, v in summary.items() if k.endswith("_std")}}
        return self.last_eval

    def on_validation_epoch_end(self) -> None:
        logged = self._end_eval("val")
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            entry = self.history.setdefault(int(self.current_epoch), {"epoch": int(self.current_epoch)})
            entry.update(logged)
            entry["volumes"] = len(self.volume_results)

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    def _log_images(self, batch: dict[str, Any], output: torch.Tensor) -> None:
        every = max(1, self.cfg.trainer.image_every_n_epochs)
        logger = self.logger
        if logger is None or not hasattr(logger.experiment, "add_image") or self.current_epoch % every:
            return
        target = batch["target"][0, 0].float().cpu()
        inp = (batch["image"][0, 0].float() * batch["std"][0] + batch["mean"][0]).cpu()
        out = output[0].detach().cpu()
        scale = float(target.max()) or 1.0
        panels = [target, inp, out, (out - target).abs()]
        grid = torch.cat([(p / scale).clamp(0, 1) for p in panels], dim=-1).unsqueeze(0)
        logger.experiment.add_image("val/target|input|output|error", grid, self.global_step, dataformats="CHW")

    # ------------------------------------------------------------------ checkpoint extras (plain types only)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mrlearn"] = {
            "history": {str(k): dict(v) for k, v in self.history.items()},
            "train_sum": self._train_sum, "train_count": self._train_count,
            "epoch_lr": getattr(self, "_epoch_lr", None),
            "model": dict(self.cfg.model), "method": {k: v for k, v in self.cfg.method.items()},
            "config": config_to_dict(self.cfg),  # lets mrlearn.load_model rebuild the method without config.yaml
            "plugins": registry.plugin_modules(),  # modules outside mrlearn that registered entries (a loader names them)
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("mrlearn", {})
        self.history = {int(k): dict(v) for k, v in extra.get("history", {}).items()}
        self._train_sum = float(extra.get("train_sum", 0.0))
        self._train_count = int(extra.get("train_count", 0))
        if extra.get("epoch_lr") is not None:  # a run resumed at the end of an epoch records that epoch's rate
            self._epoch_lr = float(extra["epoch_lr"])

    def history_list(self) -> list[dict[str, float]]:
        return [self.history[k] for k in sorted(self.history)]

