"""Lightning method ``mtl``: multi-task training of an unrolled network, through the shared engine.

Per training step, for every task ``t`` present in the batch: the forward pass on that task's samples and the task
loss ``L_t`` (the configured loss on ``|x| / scale`` against ``target / scale``, so k-space scaling does not
matter). Then, by weighting (``tasks.weighting``):

* loss-based weightings (equal, fixed, inverse, DWA, uncertainty): Lightning's automatic optimisation of
  ``sum_t task_loss(t, L_t)`` (one backward; gradient clipping, accumulation and precision as for any method);
* gradient-based weightings (``Weighting.needs_grads``: MGDA, PCGrad, CAGrad, GradNorm): manual optimisation,
  one backward per task and the shared parameters' per-task gradients combined (``mtl.step.multitask_backward``).

Several processes (DDP): every step all-reduces the per-task sample counts, each process weights its share of
task ``t`` by ``n_t / N_t``, so the update equals the single-process update of the global batch (automatic: the
loss is multiplied by the world size, as DDP averages; manual: gradients are summed by ``multitask_backward``'s
``reduce``, outside DDP's own synchronisation). A task absent from a batch leaves its parameters without a gradient
(``None``: the optimizer skips them); under DDP (automatic) ``ddp_unused_parameters`` makes the trainer let DDP
find them, so one absent from the GLOBAL batch keeps ``None`` on every process too instead of an all-reduced zero
that Adam would step.

Logged per step: ``train_loss`` (sum of raw task losses), ``loss/<task>``, ``weight/<task>``; per epoch the mean
raw loss per task feeds DWA; validation logs ``val_psnr/<task>``, ``val_ssim/<task>`` besides the means of
``ReconModule``. ``samples_seen`` counts the training samples of every task (data task, also when pooled), saved in
checkpoints and written to the history as ``samples/<task>``; ``tasks.max_samples`` ends the fit once a listed
task has seen its count (``stopped_by_cap = "max_samples"``, read by the engine's convergence record). The model is called as
``model(kspace, mask, sens_maps, task)`` (``mtl_unrolled``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

from mrlearn.config import ExperimentConfig
from mrlearn.errors import MrlearnError, input_error
from mrlearn.evaluation.scoring import summarise_volumes
from mrlearn.mtl.config import tasks_config
from mrlearn.mtl.step import multitask_backward
from mrlearn.mtl.weighting import Inverse, build_weighting, inverse_size_weights
from mrlearn.physics.complex import crop_or_pad
from mrlearn.registry import register
from mrlearn.training.module import NonFiniteLossError, ReconModule


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


@register("method", "mtl")
class MultiTaskModule(ReconModule):
    """Multi-task reconstruction (see the module docstring)."""

    keep_kspace = True

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig):
        super().__init__(model, loss, cfg)
        self.tasks = tasks_config(cfg)
        self.task_names = self.tasks.names
        self.model_tasks = 1 if self.tasks.pooled else len(self.task_names)
        have = getattr(model, "num_tasks", None)
        if have is not None and have != self.model_tasks:
            raise input_error("model.num_tasks", f"is {have} but the run has {self.model_tasks} model task(s) "
                              f"({'pooled' if self.tasks.pooled else ', '.join(self.task_names)})",
                              f"set model.num_tasks: {self.model_tasks}")
        self.weighting = build_weighting(self.tasks.weighting, self.model_tasks)
        self.automatic_optimization = not self.weighting.needs_grads
        self.ddp_unused_parameters = self.automatic_optimization  # engine.trainer.ddp_strategy: tasks absent
        self.clip_value: float | None = None  # manual optimisation clips here (set by mtl.train)
        self.file_task: dict[str, int] = {}
        self.samples_seen = [0] * len(self.task_names)
        self.stopped_by_cap: str | None = None
        self._task_sum = [0.0] * self.model_tasks
        self._task_count = [0] * self.model_tasks
        self.task_volume_results: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ set-up from the data
    def set_sizes(self, sizes: list[int]) -> None:
        """Give the weighting the training-set sizes (``inverse``); pooled runs have one model task."""
        if isinstance(self.weighting, Inverse) and not self.tasks.pooled:
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

    def _counts(self, batch: dict[str, Any], task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Local model-task counts, global model-task counts, global data-task counts (all float64, CPU)."""
        local = torch.bincount(task.cpu(), minlength=self.model_tasks).double()
        data = torch.bincount(torch.as_tensor(batch["task"]).long().cpu(), minlength=len(self.task_names)).double()
        both = torch.cat([local, data])
        if _dist():
            both = both.to(self.device)
            torch.distributed.all_reduce(both)
            both = both.cpu()
        return local, both[: self.model_tasks], both[self.model_tasks:]

    def _sum_over_processes(self, *parts: torch.Tensor) -> list[torch.Tensor]:
        """Sum tensors over DDP processes in one all-reduce (identity in one process)."""
        if not _dist():
            return list(parts)
        flat = torch.cat([p.reshape(-1).to(self.device, torch.float32) for p in parts])
        torch.distributed.all_reduce(flat)
        out, offset = [], 0
        for p in parts:
            out.append(flat[offset: offset + p.numel()].reshape(p.shape).to(p.device, p.dtype))
            offset += p.numel()
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        task = self.model_task(batch)
        local, global_counts, data_counts = self._counts(batch, task)
        present = [t for t in range(self.model_tasks) if global_counts[t] > 0]
        scale = {t: float(local[t] / global_counts[t]) for t in present} if _dist() else {}
        index = {t: torch.nonzero(task == t).flatten() for t in present if local[t] > 0}
        if self.automatic_optimization:
            total, raw = None, torch.zeros(len(present))
            for j, t in enumerate(present):
                if t not in index:
                    continue
                loss = self._task_loss(batch, index[t])
                raw[j] = loss.detach().float().cpu() * scale.get(t, 1.0)
                term = self.weighting.task_loss(t, loss) * scale.get(t, 1.0)
                total = term if total is None else total + term
            if total is None:
                total = self.model_output_zero()
            if _dist():  # DDP averages gradients: undo it (parameters unused here are found by DDP)
                total = total * torch.distributed.get_world_size()
            (losses,) = self._sum_over_processes(raw)
            weights = self.weighting.weights()
            out = total
        else:
            opt = self.optimizers()
            opt.zero_grad()
            closures = {t: (lambda i=i: self._task_loss(batch, i)) for t, i in index.items()}
            shared = list(self.model.shared_parameters()) if hasattr(self.model, "shared_parameters") else []
            ids = {id(p) for p in shared}
            others = [p for p in self.parameters() if id(p) not in ids]
            ddp = getattr(self.trainer.strategy, "model", None)
            sync = ddp.no_sync() if _dist() and hasattr(ddp, "no_sync") else contextlib.nullcontext()
            with sync:
                result = multitask_backward(closures, self.weighting, shared, backward=self.manual_backward,
                                            tasks=present, scale=scale, others=others,
                                            reduce=self._reduce if _dist() else None)
            losses, weights, out = result.losses, result.weights, None
        if not torch.isfinite(losses).all():
            slices = ", ".join(f"{f}[{int(s)}]" for f, s in zip(batch["fname"], batch["slice"]))
            raise NonFiniteLossError(f"training: task losses {losses.tolist()} at step {self.global_step} "
                                     f"(batch {batch_idx}: {slices}); the run stopped and the last good checkpoint is "
                                     "kept; lower optim.lr")
        if not self.automatic_optimization:
            if self.clip_value:
                self.clip_gradients(opt, gradient_clip_val=self.clip_value, gradient_clip_algorithm="norm")
            opt.step()
        self._bookkeeping(present, losses, weights, global_counts, data_counts)
        return out

    def model_output_zero(self) -> torch.Tensor:
        """``0 * sum(parameters)``: a zero loss that touches every trainable parameter (DDP needs them all)."""
        return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), torch.zeros((), device=self.device))

    def _reduce(self, rows: torch.Tensor, losses: torch.Tensor, other: torch.Tensor):
        return tuple(self._sum_over_processes(rows, losses, other))

    def _bookkeeping(self, present: list[int], losses: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor,
                     data_counts: torch.Tensor) -> None:
        n = int(counts.sum())
        for j, t in enumerate(present):
            c = int(counts[t])
            self._task_sum[t] += float(losses[j]) * c
            self._task_count[t] += c
            self.log(f"loss/{self.task_label(t)}", float(losses[j]), on_step=True, on_epoch=False, batch_size=c)
        for t in range(self.model_tasks):
            self.log(f"weight/{self.task_label(t)}", float(weights[t]), on_step=True, on_epoch=False, batch_size=n)
        for i, c in enumerate(data_counts.tolist()):
            self.samples_seen[i] += int(c)
        self._stop_at_sample_cap()
        total = float(losses.sum())
        self._train_sum += total * n
        self._train_count += n
        self.log("train_loss", total, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)

    def task_label(self, t: int) -> str:
        return "pooled" if self.tasks.pooled else self.task_names[t]

    def samples_per_task(self) -> dict[str, int]:
        return dict(zip(self.task_names, self.samples_seen))

    def _stop_at_sample_cap(self) -> None:
        """End the fit once a task of ``tasks.max_samples`` has seen its count (``stopped_by_cap``)."""
        caps = self.tasks.max_samples or {}
        if any(self.samples_per_task().get(name, -1) >= cap for name, cap in caps.items()):
            self.stopped_by_cap = "max_samples"
            self.trainer.should_stop = True

    def on_train_start(self) -> None:
        super().on_train_start()
        self._stop_at_sample_cap()  # a resumed run that had reached its cap stays stopped

    def on_train_epoch_end(self) -> None:
        # the base sums train_loss over ranks; here the losses are global already: sum on one rank's share
        if _dist():
            w = torch.distributed.get_world_size()
            self._train_sum, self._train_count = self._train_sum / w, self._train_count / w
        super().on_train_epoch_end()
        means = [s / c if c else math.nan for s, c in zip(self._task_sum, self._task_count)]
        self.weighting.epoch_end(means)
        entry = self.history.setdefault(int(self.current_epoch), {"epoch": int(self.current_epoch)})
        for t, m in enumerate(means):
            entry[f"loss/{self.task_label(t)}"] = m
            entry[f"weight/{self.task_label(t)}"] = float(self.weighting.weights()[t])
        entry.update({f"samples/{k}": v for k, v in self.samples_per_task().items()})
        if not self.automatic_optimization:
            sched = self.lr_schedulers()
            if sched is not None:
                sched.step()

    # ------------------------------------------------------------------ per-task validation
    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            entry = self.history.setdefault(int(self.current_epoch), {"epoch": int(self.current_epoch)})
            entry["step"] = int(self.global_step)
            entry.update({f"samples/{k}": v for k, v in self.samples_per_task().items()})

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

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["mrlearn"]["mtl"] = {"samples_seen": list(self.samples_seen), "task_sum": list(self._task_sum),
                                        "task_count": list(self._task_count)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        extra = checkpoint.get("mrlearn", {}).get("mtl", {})
        self.samples_seen = [int(v) for v in extra.get("samples_seen", self.samples_seen)]
        self._task_sum = [float(v) for v in extra.get("task_sum", self._task_sum)]
        self._task_count = [int(v) for v in extra.get("task_count", self._task_count)]
