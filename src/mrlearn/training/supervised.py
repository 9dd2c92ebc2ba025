"""Supervised image-domain reconstruction (method ``supervised``): the fastMRI U-Net recipe.

The network maps the normalised zero-filled magnitude image ``[B, 1, h, w]`` to the normalised target
(``data.transforms``: instance normalisation by the input's mean/std, clamp +-6); the loss compares them in
normalised units; reconstructions are de-normalised (``out * std + mean``) into data units.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mrlearn.config import ExperimentConfig
from mrlearn.data.transforms import denormalise, normalise_target
from mrlearn.models.protocol import require_input
from mrlearn.registry import register
from mrlearn.training.module import ReconModule


@register("method", "supervised")
class SupervisedModule(ReconModule):
    """Supervised training of an image-to-image network (any registered model with 1 in / 1 out channel)."""

    keep_kspace = False
    requires_target = True

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig):
        require_input(model, "supervised", ("image",), image_chans=1)
        super().__init__(model, loss, cfg)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def _loss(self, batch: dict[str, Any], output_n: torch.Tensor) -> torch.Tensor:
        target_n = normalise_target(batch["target"], batch["mean"], batch["std"])
        data_range = target_n.amax(dim=(-3, -2, -1)) - target_n.amin(dim=(-3, -2, -1))
        return self.loss_fn(output_n, target_n, data_range)

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self._loss(batch, self.model(batch["image"]))

    def reconstruct(self, batch: dict[str, Any]) -> torch.Tensor:
        return denormalise(self.model(batch["image"]), batch["mean"], batch["std"])

    def eval_loss(self, batch: dict[str, Any], output: torch.Tensor) -> torch.Tensor | None:
        if not bool(batch["has_target"].all()):
            return None
        output_n = (output.unsqueeze(1) - batch["mean"].reshape(-1, 1, 1, 1)) / batch["std"].reshape(-1, 1, 1, 1)
        return self._loss(batch, output_n).detach()


@register("method", "supervised_kspace")
class SupervisedKspaceModule(ReconModule):
    """Supervised training of a physics-based network on masked k-space (e.g. the ``unrolled`` model).

    The model is called as ``model(kspace [B, C, H, W], mask, sens_maps or None) -> complex image [B, H, W]`` on
    the sample's k-space divided by its per-slice ``scale``; the magnitude is centre-cropped (or zero-padded) to
    the target size. The loss compares ``|image|`` with ``target / scale`` (scale-free units); reconstructions are
    multiplied back by ``scale`` (data units), so the method works for k-space scaled anywhere.
    """

    keep_kspace = True
    requires_target = True

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig):
        require_input(model, "supervised_kspace", ("kspace",))
        super().__init__(model, loss, cfg)

    def _magnitude(self, batch: dict[str, Any]) -> torch.Tensor:
        from mrlearn.physics.complex import crop_or_pad

        image = self.model(batch["kspace"], batch["mask"], batch.get("sens_maps"))
        return crop_or_pad(image.abs(), tuple(batch["target"].shape[-2:])).float()

    def _loss(self, batch: dict[str, Any], magnitude_n: torch.Tensor) -> torch.Tensor:
        target_n = batch["target"][:, 0].float() / batch["scale"].reshape(-1, 1, 1)
        data_range = target_n.amax(dim=(-2, -1)) - target_n.amin(dim=(-2, -1))
        return self.loss_fn(magnitude_n.unsqueeze(1), target_n.unsqueeze(1), data_range)

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self._loss(batch, self._magnitude(batch))

    def reconstruct(self, batch: dict[str, Any]) -> torch.Tensor:
        return self._magnitude(batch) * batch["scale"].reshape(-1, 1, 1).to(torch.float32)

    def eval_loss(self, batch: dict[str, Any], output: torch.Tensor) -> torch.Tensor | None:
        if not bool(batch["has_target"].all()):
            return None
        return self._loss(batch, output / batch["scale"].reshape(-1, 1, 1)).detach()
