"""Lightning method ``mtl``: multi-task training of an unrolled network with manual optimisation.

Per training step (``mtl.step.multitask_backward``): for every task present in the batch, the forward pass on
that task's samples, the task loss ``L_t`` (the configured loss on ``|x| / scale`` against ``target / scale``, so
k-space scaling does not matter), one backward of the weighted task loss; the shared parameters' per-task
gradients are combined by the weighting (``tasks.weighting``); one optimizer step. Logged per step:
``train_loss`` (sum of raw task losses), ``loss/<task>`` and ``weight/<task>``; per epoch the mean raw loss per task
feeds DWA; validation logs ``val_psnr/<task>``, ``val_ssim/<task>`` besides the overall means of ``ReconModule``.
The model is any network called as ``model(kspace, mask, sens_maps, task)`` (``mtl_unrolled``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mrlearn.config import ExperimentConfig
from mrlearn.mtl.config import tasks_config
from mrlearn.mtl.step import multitask_backward
from mrlearn.mtl.weighting import build_weighting
from mrlearn.physics.complex import crop_or_pad
from mrlearn.registry import register
from mrlearn.training.module import NonFiniteLossError, ReconModule
from mrlearn.training.volumes import summarise_volumes


@register("method", "mtl")
class MultiTaskModule(ReconModule):
    """Multi-task reconstruction (see the module docstring)."""

    keep_kspace = True

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig):
        super().__init__(model, loss, cfg)
        self.automatic_optimization = False
        self.tasks = tasks_config(cfg)
        self.task_names = self.tasks.names
        self.model_tasks = 1 if self.tasks.pooled else len(self.task_names)
        have = getattr(model, "num_tasks", None)
        if have is not None and have != self.model_tasks:
            from mrlearn.errors import input_error

            raise input_error("model.num_tasks", f"is {have} but the run has {self.model_tasks} model task(s) "
                              f"({'pooled' if self.tasks.pooled else ', '.join(self.task_names)})",
                              f"set model.num_tasks: {self.model_tasks}")
        self.weighting = build_weighting(self.tasks.weighting, self.model_tasks)
        self.file_task: dict[str, int] = {}
        self._task_sum = [0.0] * self.model_tasks
        self._task_count = [0] * self.model_tasks
        self.task_volume_results: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ set-up from the data
    def set_sizes(self, sizes: list[int]) -> None:
        """Give the weighting the training-set sizes (``inverse``); pooled runs have one model task."""
        if self.weighting.__class__.__name__ == "Inverse" and not self.tasks.pooled:
            from mrlearn.mtl.weighting import inverse_size_weights

            self.weighting.lam.copy_(torch.tensor(inverse_size_weights(sizes)))

    def make_datamodule(self, cfg: ExperimentConfig | None = None) -> Any:
        """The multi-task data module of this run (also feeds the weighting's sizes and the file -> task map)."""
        from mrlearn.mtl.data import MultiTaskDataModule

        dm = MultiTaskDataModule(cfg or self.cfg)
        self.set_sizes(dm.sizes())
        self.file_task = {**dm.task_of_file("val"), **dm.task_of_file(self.tasks.eval_split)}
        return dm

    # ------------------------------------------------------------------ forward
    def model_task(self, batch: dict[str, Any]) -> torch.Tensor:
        if "task" not in batch:
            from mrlearn.errors import MrlearnError

            raise MrlearnError("method mtl: the batches carry no task index (they come from the single-task data "
                               "module); run multi-task configs with `mrlearn study CONFIG`")
        task = torch.as_tensor(batch["task"], device=batch["kspace"].device).long()
        return torch.zeros_like(task) if self.tasks.pooled else task

    def _magnitude(self, batch: dict[str, Any], idx: torch.Tensor | None = None) -> torch.Tensor:
        """``|x|`` cropped to the target size in units of ``scale`` for the samples ``idx`` (all when None)."""
        pick = (lambda v: v) if idx is None else (lambda v: v[idx])
        maps = batch.get("sens_maps")
        image = self.model(pick(batch["kspace"]), pick(batch["mask"]), None if maps is None else pick(maps),
                           pick(self.model_task(batch)))
        return crop_or_pad(image.abs(), tuple(batch["target"].shape[-2:]))

    def reconstruct(self, batch: dict[str, Any]) -> torch.Tensor:
        return self._magnitude(batch) * batch["scale"].reshape(-1, 1, 1).to(batch["kspace"].real.dtype)

    def _task_loss(self, batch: dict[str, Any], idx: torch.Tensor) -> torch.Tensor:
        out = self._magnitude(batch, idx).unsqueeze(1)
        target = batch["target"][idx] / batch["scale"][idx].reshape(-1, 1, 1, 1)
        data_range = target.amax(dim=(-3, -2, -1)) - target.amin(dim=(-3, -2, -1))
        return self.loss_fn(out, target, data_range)

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._task_sum = [0.0] * self.model_tasks
        self._task_count = [0] * self.model_tasks

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        opt.zero_grad()
        task = self.model_task(batch)
        closures = {}
        for t in torch.unique(task).tolist():
            idx = torch.nonzero(task == t).flatten()
            closures[int(t)] = (lambda i=idx: self._task_loss(batch, i))
        shared = list(self.model.shared_parameters()) if hasattr(self.model, "shared_parameters") else []
        result = multitask_backward(closures, self.weighting, shared, backward=self.manual_backward)
        total = result.losses.sum()
        if not torch.isfinite(result.losses).all():
            slices = ", ".join(f"{f}[{int(s)}]" for f, s in zip(batch["fname"], batch["slice"]))
            raise NonFiniteLossError(f"training: task losses {result.losses.tolist()} at step {self.global_step} "
                                     f"(batch {batch_idx}: {slices}); the run stopped; lower optim.lr")
        opt.step()
        n = len(batch["fname"])
        for t, loss in zip(result.tasks, result.losses.tolist()):
            count = int((task == t).sum())
            self._task_sum[t] += loss * count
            self._task_count[t] += count
            self.log(f"loss/{self.task_label(t)}", loss, on_step=True, on_epoch=False, batch_size=count)
        for t in range(self.model_tasks):
            self.log(f"weight/{self.task_label(t)}", float(result.weights[t]), on_step=True, on_epoch=False, batch_size=n)
        self._train_sum += float(total) * n
        self._train_count += n
        self.log("train_loss", total, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        return total

    def task_label(self, t: int) -> str:
        return "pooled" if self.tasks.pooled else self.task_names[t]

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        means = [s / c if c else math.nan for s, c in zip(self._task_sum, self._task_count)]
        self.weighting.epoch_end(means)
        entry = self.history.setdefault(int(self.current_epoch), {"epoch": int(self.current_epoch)})
        for t, m in enumerate(means):
            entry[f"loss/{self.task_label(t)}"] = m
            entry[f"weight/{self.task_label(t)}"] = float(self.weighting.weights()[t])
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()

    # ------------------------------------------------------------------ per-task validation
    def _end_eval(self, prefix: str) -> dict[str, float]:
        logged = super()._end_eval(prefix)
        per_task: dict[str, dict[str, dict[str, float]]] = {}
        for fname, metrics in self.volume_results.items():
            t = self.file_task.get(fname)
            if t is not None:
                per_task.setdefault(self.task_names[t], {})[fname] = metrics
        self.task_volume_results = {}
        for name, vols in per_task.items():
            summary = summarise_volumes(vols)
            self.task_volume_results[name] = summary
            for key in ("psnr", "ssim", "nmse"):
                if key in summary:
                    logged[f"{prefix}_{key}/{name}"] = summary[key]
                    self.log(f"{prefix}_{key}/{name}", summary[key], sync_dist=False)
        return logged
