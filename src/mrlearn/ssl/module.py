"""Lightning methods of self-supervised reconstruction: ``ssdu``, ``ssl_distill``, ``mtl_ssdu`` and ``reference``.

All take the physics batch of ``data.transforms`` (``keep_kspace=True``: acquired k-space / ``scale``, mask Omega,
optional maps) and never read the target during training: files without any target (undersampled files with a
``mask``) train and validate; PSNR/SSIM/NMSE are computed only for validation slices that have a target.

* ``ssdu`` (:class:`SSDUModule`): per step ``num_masks`` Theta/Lambda splits per slice (``num_masks > 1``:
  multi-mask SSDU), network on Theta (CG data consistency on Theta inside the unrolled network), the normalised
  l1 + l2 k-space loss on Lambda (``ssl.losses.ssdu_loss``); inference on all of Omega. ``val_loss``: the same
  loss for a fixed split of each validation slice (seeded by file name and slice) -- a held-out part of the
  acquired data, so target-less validation files still give a validation curve.
* ``ssl_distill`` (:class:`DistillModule`): EMA teacher / student self-distillation (``ssl.distill``), variant
  ``anchored`` (ours) or ``plain`` (Zerilli & Lodh's transfer of DINO, with its centring); logs the collapse monitor ``collapse_energy``
  (training, student on its view) and ``val_collapse_energy`` (``||output||^2 / ||zero-filled||^2`` on Omega).
  ``collapse_threshold > 0`` stops the run with a one-line error when ``val_collapse_energy`` falls below it.
* ``mtl_ssdu`` (:class:`MultiTaskSSDUModule`): the multi-task method with the SSDU loss for the tasks named in
  ``ssl_tasks`` (the scarce contrast, used only undersampled) and the supervised loss for the others.
* ``reference`` (:class:`ReferenceModule`): classical reconstructions in the same evaluation path (not
  trainable; the ``ssl`` and demo study runners evaluate it instead of fitting): any registered classical method by
  name (``zero-filled``, ``cg-sense``, ``cs-l1``, ``tv``, ...; ``mrlearn.recon``) with ``options`` for its solver.

Training masks: with ``mask.fixed_per_slice: true`` (the default of these methods) every training slice keeps ONE
acquisition mask Omega for the whole run (seeded by the slice's index, not the epoch), as a real undersampled
scan has; only the Theta/Lambda split is redrawn each epoch. ``false`` redraws Omega every epoch (data
augmentation that a prospective acquisition does not offer). Model selection (``best.ckpt``) uses ``val_loss``,
the held-out k-space loss, never a fully sampled image.

The ``method.loss`` section is not used by the self-supervised losses (they are fixed by the method).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import nn

from mrlearn.config import ExperimentConfig
from mrlearn.data.transforms import ReconTransform, fixed_per_slice
from mrlearn.errors import MrlearnError, input_error
from mrlearn.mtl.module import MultiTaskModule
from mrlearn.physics.complex import crop_or_pad
from mrlearn.models.protocol import require_input
from mrlearn.registry import register
from mrlearn.ssl.distill import VARIANTS, TeacherCentre, distill_step, ema_update, make_teacher
from mrlearn.ssl.split import SplitOptions, check_options
from mrlearn.ssl.ssdu import estimate_maps, run_model, sample_names, split_seeds, ssdu_step
from mrlearn.training.module import ReconModule

VAL_EPOCH = 2**31 - 1  # the "epoch" of validation splits: fixed, never a training epoch


class CollapseError(MrlearnError):
    """Self-distillation collapsed (the output energy fell below ``collapse_threshold``)."""


def _split_options(rho: float, selection: str, centre: list[int], std_fraction: float, split_mode: str) -> SplitOptions:
    check_options(rho, selection, centre, std_fraction, split_mode, where="method")
    return SplitOptions(float(rho), selection, (int(centre[0]), int(centre[1])), float(std_fraction), split_mode)  # type: ignore[arg-type]


def magnitude(image: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """``|x|`` cropped to the target size, times ``scale``: data units ``[B, h, w]``."""
    mag = crop_or_pad(image.abs(), tuple(batch["target"].shape[-2:]))
    return mag * batch["scale"].to(mag.dtype).reshape(-1, 1, 1)


class _SelfSupervised(ReconModule):
    """Shared pieces: split options, maps, inference on Omega, the held-out validation loss."""

    keep_kspace = True
    checkpoint_monitor = ("val_loss", "min")  # needs no target: the held-out SSDU loss of the validation slices

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig, options: SplitOptions):
        require_input(model, cfg.method.get("name", "ssdu"), ("kspace", "image"), image_chans=2)  # complex images
        super().__init__(model, loss, cfg)
        self.options = options
        if getattr(model, "sens_net", None) is not None:
            raise input_error("model.sens_refine", "learned sensitivity maps are not supported by the self-supervised "
                              "methods (the k-space loss needs the maps the network uses)", "set model.sens_refine: false")
        self._invalid = 0

    def maps(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return estimate_maps(batch["kspace"], batch["mask"], batch.get("sens_maps"))

    def build_transform(self, mask_func: Any, split: str) -> ReconTransform:
        """The data module's sample transform: one training mask per slice unless ``mask.fixed_per_slice: false``."""
        recon = tuple(self.cfg.data.recon_size) if self.cfg.data.recon_size else None
        return ReconTransform(mask_func, seed=self.cfg.seed, train=split == "train", recon_size=recon, keep_kspace=True,
                              fixed_per_slice=fixed_per_slice(self.cfg.mask, default=True))

    def inference_model(self) -> nn.Module:
        return self.model

    def reconstruct(self, batch: dict[str, Any]) -> torch.Tensor:
        image = run_model(self.inference_model(), batch["kspace"], batch["mask"], self.maps(batch))
        return magnitude(image, batch)

    def heldout_loss(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """SSDU loss of a fixed Theta/Lambda split of each slice (network on Theta, loss on Lambda)."""
        seeds = split_seeds(self.cfg.seed, VAL_EPOCH, batch["fname"], batch["slice"], 0)
        with torch.no_grad():
            step = ssdu_step(self.inference_model(), batch["kspace"], batch["mask"], self.maps(batch), self.options,
                             seeds, 1, sample_names(batch))
        return step.loss.loss.detach() if bool(step.loss.valid.any()) else None

    def eval_loss(self, batch: dict[str, Any], output: torch.Tensor) -> torch.Tensor | None:
        return self.heldout_loss(batch)

    def count_invalid(self, valid: torch.Tensor, batch: dict[str, Any]) -> None:
        """Samples whose Lambda holds no signal contribute 0; warn (once per epoch) and log how many."""
        bad = int((~valid).sum())
        self.log("ssdu_invalid", float(bad), on_step=True, on_epoch=False, batch_size=len(batch["fname"]))
        if bad and not self._invalid:
            warnings.warn(f"ssl: {bad} split(s) of {', '.join(sample_names(batch))} have no acquired signal on Lambda "
                          "(all-zero k-space there); they contribute 0 to the loss", stacklevel=2)
        self._invalid += bad

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._invalid = 0


@register("method", "ssdu")
class SSDUModule(_SelfSupervised):
    """SSDU / multi-mask SSDU (see the module docstring). ``centre`` = [rows, cols] kept in Theta."""

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig, rho: float = 0.4,
                 selection: Literal["uniform", "gaussian"] = "uniform", centre: list[int] = [4, 4],  # noqa: B006
                 std_fraction: float = 0.25, split_mode: Literal["points", "lines"] = "points", num_masks: int = 1):
        if num_masks < 1:
            raise input_error("method.num_masks", f"must be at least 1, got {num_masks}", "e.g. 4 for multi-mask SSDU")
        super().__init__(model, loss, cfg, _split_options(rho, selection, centre, std_fraction, split_mode))
        self.num_masks = int(num_masks)

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor, sens_maps: torch.Tensor | None = None) -> torch.Tensor:
        return run_model(self.model, kspace, mask, estimate_maps(kspace, mask, sens_maps))

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        seeds = split_seeds(self.cfg.seed, self.current_epoch, batch["fname"], batch["slice"], 0)
        step = ssdu_step(self.model, batch["kspace"], batch["mask"], self.maps(batch), self.options, seeds,
                         self.num_masks, sample_names(batch))
        self.count_invalid(step.loss.valid, batch)
        return step.loss.loss


@register("method", "ssl_distill")
class DistillModule(_SelfSupervised):
    """Self-distillation with an EMA teacher (see ``ssl.distill``); ``rho`` is the fraction each view drops."""

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig, variant: Literal["plain", "anchored"] = "anchored",
                 rho: float = 0.4, selection: Literal["uniform", "gaussian"] = "uniform", centre: list[int] = [4, 4],  # noqa: B006
                 std_fraction: float = 0.25, split_mode: Literal["points", "lines"] = "points",
                 ema_momentum: float = 0.99, ssdu_weight: float = 1.0, distill_weight: float = 1.0,
                 centre_momentum: float = 0.9, infer_with: Literal["teacher", "student"] = "teacher",
                 collapse_threshold: float = 0.0):
        if variant not in VARIANTS:
            raise input_error("method.variant", f"unknown value {variant!r}", f"choose one of: {', '.join(VARIANTS)}")
        if not 0 <= ema_momentum < 1:
            raise input_error("method.ema_momentum", f"must be in [0, 1), got {ema_momentum}", "e.g. 0.99")
        if infer_with not in ("teacher", "student"):
            raise input_error("method.infer_with", f"unknown value {infer_with!r}", "choose teacher or student")
        if ssdu_weight < 0 or distill_weight < 0 or ssdu_weight + distill_weight <= 0:
            raise input_error("method.ssdu_weight", "the loss weights must be >= 0 and not both 0", "e.g. 1.0 and 1.0")
        super().__init__(model, loss, cfg, _split_options(rho, selection, centre, std_fraction, split_mode))
        self.variant, self.ema_momentum = variant, float(ema_momentum)
        self.ssdu_weight, self.distill_weight = float(ssdu_weight), float(distill_weight)
        self.infer_with, self.collapse_threshold = infer_with, float(collapse_threshold)
        self.teacher = make_teacher(model)
        self.centring = TeacherCentre(centre_momentum) if variant == "plain" else None
        self._energy_sum, self._energy_count = 0.0, 0

    def inference_model(self) -> nn.Module:
        return self.teacher if self.infer_with == "teacher" else self.model

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        seeds = split_seeds(self.cfg.seed, self.current_epoch, batch["fname"], batch["slice"], 0)
        step = distill_step(self.model, self.teacher, batch["kspace"], batch["mask"], self.maps(batch), self.options,
                            seeds, self.variant, self.ssdu_weight, self.distill_weight, sample_names(batch), self.centring)
        n = len(batch["fname"])
        energy = step.energy[torch.isfinite(step.energy)]
        if energy.numel():
            self.log("collapse_energy", float(energy.mean()), on_step=True, on_epoch=False, batch_size=n)
        self.log("loss_distill", float(step.distill), on_step=True, on_epoch=False, batch_size=n)
        self.log("loss_ssdu", float(step.ssdu), on_step=True, on_epoch=False, batch_size=n)
        return step.loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        ema_update(self.teacher, self.model, self.ema_momentum)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._energy_sum, self._energy_count = 0.0, 0

    def eval_loss(self, batch: dict[str, Any], output: torch.Tensor) -> torch.Tensor | None:
        zf = batch["zero_filled"][:, 0].to(output.dtype)
        out_e, zf_e = output.pow(2).flatten(1).sum(-1), zf.pow(2).flatten(1).sum(-1)
        ok = (zf_e > 0) & torch.isfinite(out_e)
        self._energy_sum += float((out_e[ok] / zf_e[ok]).sum())
        self._energy_count += int(ok.sum())
        return self.heldout_loss(batch)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self._energy_count:
            return
        ratio = self._energy_sum / self._energy_count
        self.log("val_collapse_energy", ratio, sync_dist=False)
        self.last_eval["val_collapse_energy"] = ratio  # the engine's final evaluation reports last_eval
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self.history.setdefault(int(self.current_epoch), {"epoch": int(self.current_epoch)})["val_collapse_energy"] = ratio
            if self.collapse_threshold > 0 and ratio < self.collapse_threshold:
                raise CollapseError(f"ssl_distill: the output collapsed (val_collapse_energy {ratio:.3g} < "
                                    f"method.collapse_threshold {self.collapse_threshold:g}) at epoch {self.current_epoch}; "
                                    "use variant: anchored (data consistency + SSDU loss) or raise ssdu_weight")


@register("method", "reference")
class ReferenceModule(ReconModule):
    """A classical reconstruction scored like a trained method: ``recon`` names a registered classical method
    (``mrlearn.recon``: ``zero-filled``, ``cg-sense``, ``cs-l1``, ...), ``options`` its keyword options.
    :meth:`solver_record` says how its iterative solver stopped (tolerance or iteration cap) over every batch."""

    keep_kspace = True

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig, recon: str = "zero-filled",
                 options: dict[str, Any] | None = None):
        from mrlearn import registry
        from mrlearn.recon.folder import slice_predictor

        if registry.find("recon", recon) is None:
            raise input_error("method.recon", f"{recon!r} is not a classical method",
                              f"choose one of: {', '.join(registry.available('recon'))}")
        super().__init__(model, loss, cfg)
        self.recon, self.options = recon, dict(options or {})
        self.solver_log: list[dict[str, Any]] = []
        self._predict = slice_predictor(recon, self.options, self.solver_log)

    def solver_record(self) -> dict[str, Any] | None:
        """Convergence fields of the batches reconstructed so far (None for a non-iterative method)."""
        from mrlearn.recon.stopping import solver_record

        return solver_record(self.solver_log)

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        raise input_error("method", "'reference' reconstructions are not trained",
                          "evaluate them in a study with runner: ssl (see configs/ssl_vs_supervised.yaml)")

    def reconstruct(self, batch: dict[str, Any]) -> torch.Tensor:
        return self._predict(batch).float()


class TaskBound(nn.Module):
    """A multi-task network seen as ``model(kspace, mask, sens_maps)`` for fixed per-sample tasks ``task [B]``."""

    input_kind = "kspace"  # model-input protocol (models.protocol)

    def __init__(self, model: nn.Module, task: torch.Tensor):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor, sens_maps: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(kspace, mask, sens_maps, self.task.repeat(kspace.shape[0] // self.task.shape[0]))


@register("method", "mtl_ssdu")
class MultiTaskSSDUModule(MultiTaskModule):
    """Multi-task training where the tasks in ``ssl_tasks`` get the SSDU loss (no targets), the others supervised."""

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig, ssl_tasks: list[str] = [],  # noqa: B006
                 rho: float = 0.4, selection: Literal["uniform", "gaussian"] = "uniform",
                 centre: list[int] = [4, 4], std_fraction: float = 0.25,  # noqa: B006
                 split_mode: Literal["points", "lines"] = "points", num_masks: int = 1):
        super().__init__(model, loss, cfg)
        unknown = [t for t in ssl_tasks if t not in self.task_names]
        if unknown or not ssl_tasks:
            raise input_error("method.ssl_tasks", f"{unknown or ssl_tasks!r} must name tasks of tasks.tasks",
                              f"choose from: {', '.join(self.task_names)}")
        if self.tasks.pooled:
            raise input_error("method.ssl_tasks", "needs per-task training", "set tasks.pooled: false")
        self.ssl_ids = {self.task_names.index(t) for t in ssl_tasks}
        self.options = _split_options(rho, selection, centre, std_fraction, split_mode)
        self.num_masks = int(num_masks)

    def _task_loss(self, batch: dict[str, Any], idx: torch.Tensor) -> torch.Tensor:
        t = int(self.model_task(batch)[idx[0]])
        if t not in self.ssl_ids:
            return super()._task_loss(batch, idx)
        kspace, mask = batch["kspace"][idx], batch["mask"][idx]
        maps = estimate_maps(kspace, mask, None if batch.get("sens_maps") is None else batch["sens_maps"][idx])
        names = [f"{batch['fname'][i]}[{int(batch['slice'][i])}]" for i in idx.tolist()]
        seeds = split_seeds(self.cfg.seed, self.current_epoch, [batch["fname"][i] for i in idx.tolist()],
                            [int(batch["slice"][i]) for i in idx.tolist()], 0)
        step = ssdu_step(TaskBound(self.model, self.model_task(batch)[idx]), kspace, mask, maps, self.options, seeds,
                         self.num_masks, names)
        return step.loss.loss

    def reconstruct(self, batch: dict[str, Any]) -> torch.Tensor:
        maps = estimate_maps(batch["kspace"], batch["mask"], batch.get("sens_maps"))
        image = self.model(batch["kspace"], batch["mask"], maps, self.model_task(batch))
        return magnitude(image, batch)


__all__ = ["CollapseError", "DistillModule", "MultiTaskSSDUModule", "ReferenceModule", "SSDUModule", "magnitude"]
