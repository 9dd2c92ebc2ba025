"""Seed-001 samples: SENSE zero-filled input and fully sampled SENSE target, complex as 2 channels.

For one raw slice (``kspace [C, H, W]`` complex, docs/architecture.md), plugged into the training spine's
data module (``training.data``) in place of ``data.transforms.ReconTransform`` (same call and mask rules):
  1. the mask of ``ReconTransform.select_mask`` (file mask > random training mask seeded by ``(seed, epoch,
     index)`` > per-file fixed validation mask; columns outside ``padding`` zeroed). The paper's masks are the registry
     masks ``poisson`` (4x, ``calib: [16, 16]``) and ``random`` (4x, ``center_fractions: [0.04]``);
  2. sensitivity maps from the ``calib`` (16 x 16) fully sampled centre of the *undersampled* k-space
     (:func:`mrlearn.physics.espirit.acs_sens_maps`); single-coil data use no maps;
  3. input ``x0 = A^H M y = sum_c conj(S_c) F^-1 (M y_c)``, target ``x = sum_c conj(S_c) F^-1 y_c`` (same maps),
     both centre-cropped (or zero-padded) to the recon size;
  4. both divided by ``scale = max |x0|`` (1 when zero or not finite): a pure scaling, so the physics stays
     linear and any k-space scale (1e-6 .. 1e12) gives the same network input.

Sample keys (the spine's contract, so ``training.module.ReconModule`` evaluates it unchanged):
``image`` ``[2, h, w]`` float32 (x0 / scale; real, imaginary), ``target_complex`` ``[2, h, w]`` (x / scale),
``target`` ``[1, h, w]`` the magnitude ``|x|`` in data units, ``has_target`` True, ``mean`` 0, ``std`` scale
(so ``denormalise`` multiplies by ``scale``), ``max`` (NaN), ``fname``, ``slice``, ``mask`` (float32).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mrlearn.data.transforms import ReconTransform
from mrlearn.physics.complex import complex_to_channels, crop_or_pad
from mrlearn.physics.espirit import acs_sens_maps
from mrlearn.physics.sense import sense_adjoint


def sense_maps(masked: torch.Tensor, calib: tuple[int, int] = (16, 16), where: str = "kspace") -> torch.Tensor | None:
    """Maps ``[C, H, W]`` from the ``calib`` centre of the undersampled ``masked [C, H, W]``; None for one coil."""
    return None if masked.shape[0] == 1 else acs_sens_maps(masked, calib, where=where)


def sense_images(kspace: torch.Tensor, mask: torch.Tensor | None, calib: tuple[int, int] = (16, 16),
                 where: str = "kspace") -> tuple[torch.Tensor, torch.Tensor]:
    """Complex ``(zero_filled, fully_sampled)`` SENSE images ``[H, W]`` of ``kspace [C, H, W]`` and ``mask``."""
    masked = kspace if mask is None else kspace * mask + 0.0
    maps = sense_maps(masked, calib, where)
    return sense_adjoint(masked, maps), sense_adjoint(kspace, maps)


class SenseTransform(ReconTransform):
    """Callable ``(raw_sample, index, epoch) -> sample`` of :mod:`mrlearn.layerwise` (see the module docstring)."""

    def __init__(self, mask_func, seed: int = 0, train: bool = False, recon_size: tuple[int, int] | None = None,
                 calib: tuple[int, int] = (16, 16)):
        super().__init__(mask_func, seed=seed, train=train, recon_size=recon_size, keep_kspace=False)
        self.calib = (int(calib[0]), int(calib[1]))

    def __call__(self, sample: dict[str, Any], index: int = 0, epoch: int = 0) -> dict[str, Any]:
        kspace, mask, shape = self.kspace_and_mask(sample, index, epoch)
        zf, full = sense_images(kspace, mask, self.calib, where=str(sample.get("fname", "kspace")))
        size = self.recon_size or tuple(int(s) for s in (sample.get("recon_size") or shape))
        zf, full = crop_or_pad(zf, size), crop_or_pad(full, size)
        scale = float(zf.abs().max())
        if not math.isfinite(scale) or scale <= 0.0:
            scale = 1.0
        return {
            "image": complex_to_channels(zf / scale).float(),
            "target_complex": complex_to_channels(full / scale).float(),
            "target": full.abs().float().unsqueeze(0),
            "has_target": True,
            "mean": torch.tensor(0.0),
            "std": torch.tensor(scale, dtype=torch.float32),
            "max": float("nan"),
            "fname": str(sample["fname"]),
            "slice": int(sample["slice"]),
            "mask": mask if mask is not None else torch.ones(1, 1, shape[1]),
        }
