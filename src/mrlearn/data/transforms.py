"""Raw slice sample -> training sample: mask, zero-filled input, normalisation, crop/pad (no Lightning).

Mask (``[1, 1, W]`` column mask or ``[1, H, W]`` 2-D mask, float32 0/1, broadcast over coils):
  * the file's own ``mask`` when it has one (test/challenge files: already undersampled);
  * training: a random mask drawn with ``mask_func(shape, seed=(seed, epoch, index))`` so that a run resumed
    mid-epoch sees exactly the same masks; with ``fixed_per_slice`` the epoch is left out (``epoch = 0``), so each
    training slice keeps one mask for the whole run, as a real undersampled acquisition has (``mask.fixed_per_slice``
    in a config);
  * validation/test: ``mask_func(shape, seed=file_seed(fname))``, fastMRI's per-file seed (the same for every
    slice, every run, and the mask fastMRI's code draws for that file);
  * columns outside the file's ``padding`` (acquired columns ``[left, right)``) are zeroed.

U-Net input (fastMRI convention): the zero-filled image ``x = RSS_c |F^-1 (M y_c)|`` (the magnitude for
single-coil) centre-cropped (or zero-padded) to the recon size ``[h, w]`` (a k-space width ``W`` below ``w``, as
in narrow FLAIR volumes, crops input and target to ``(W, W)`` instead, as fastMRI); instance-normalised with the input's
own mean and standard deviation, ``x_n = clamp((x - mean) / std, -6, 6)``; the target is kept in data units and
normalised by the training module with the *same* mean/std (:func:`normalise_target`, also clamped to +-6).
Network outputs are de-normalised with ``out * std + mean`` (:func:`denormalise`). Because mean and std
scale with the data, the de-normalised output scales linearly with the k-space scale (1e-6 .. 1e12 all work);
statistics are computed in float64 and a zero std is replaced by 1.

Physics-based networks also get (``keep_kspace=True``): ``kspace`` the masked k-space ``[C, H, W]`` complex64
divided by ``scale``, ``mask``, ``scale`` (a per-slice float: the maximum of the zero-filled image, 1 when that
is zero) and ``sens_maps`` ``[C, H, W]`` when the raw sample has them. Multiply their output by ``scale``.

A training sample is a :class:`mrlearn.data.sample.Sample` (collated into a :class:`~mrlearn.data.sample.Batch`;
shapes and units are stated there): ``image`` ``[1, h, w]`` (normalised), ``target`` ``[1, h, w]`` in data units
(zeros without a target), ``has_target``, ``target_noiseless`` ``[1, h, w]`` (the noiseless reference of simulated
files, ``reconstruction_noiseless``, cropped/padded like the target; None when the file has none), ``segmentation``
``[1, h, w]`` int64 class labels (simulated files; cropped like the target, 0 = background where it is padded; None
when the file has none), ``zero_filled``
``[1, h, w]`` (data units), ``mean``, ``std``, ``max`` (target volume max, NaN when unknown), ``fname``, ``slice``,
``acquisition``, ``recon_size``, ``padding``, and the physics entries above when requested. It also reads as a dict
of those keys.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from mrlearn.data.sample import Sample
from mrlearn.physics.complex import crop_or_pad
from mrlearn.physics.fft import ifft2c
from mrlearn.physics.masks import MaskFunc, file_seed
from mrlearn.physics.sense import apply_mask, rss


def mask_to_tensor(mask: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A mask ``[W]``, ``[1, W]`` or ``[H, W]`` -> float32 ``[1, 1, W]`` or ``[1, H, W]`` for k-space ``[C, H, W]``."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))
    h, w = shape
    if m.ndim == 1 or (m.ndim == 2 and m.shape[0] == 1):
        m = m.reshape(1, 1, -1)
    elif m.ndim == 2:
        m = m.reshape(1, *m.shape)
    if m.shape[-1] != w or m.shape[-2] not in (1, h):
        raise ValueError(f"mask of shape {tuple(m.shape)} does not fit k-space of size {h} x {w}")
    return m


def zero_filled_magnitude(kspace: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Masked k-space ``[C, H, W]`` -> RSS (magnitude for ``C = 1``) of the zero-filled coil images ``[H, W]``."""
    return rss(ifft2c(apply_mask(kspace, mask)), dim=-3)


def normalise(image: torch.Tensor, eps_rel: float = 0.0) -> tuple[torch.Tensor, float, float]:
    """Instance normalisation ``(x - mean) / std`` clamped to +-6; returns (normalised, mean, std) (float64 stats)."""
    x64 = image.double()
    mean = float(x64.mean())
    std = float(x64.std()) if image.numel() > 1 else 0.0
    if not math.isfinite(std) or std <= 0:
        std = 1.0
    return ((image - mean) / std).clamp(-6, 6).float(), mean, std


class ReconTransform:
    """Callable ``(raw_sample, index, epoch) -> training sample`` (see the module docstring).

    ``mask_func`` is a MaskFunc (``physics.masks``) or None (no retrospective undersampling: fully sampled
    input unless the file carries a mask). ``train`` selects random (seeded by ``(seed, epoch, index)``) vs.
    per-file fixed masks; ``fixed_per_slice`` keeps one training mask per slice. ``recon_size`` overrides the
    sample's ``recon_size``.
    """

    def __init__(self, mask_func: MaskFunc | None, seed: int = 0, train: bool = False,
                 recon_size: tuple[int, int] | None = None, keep_kspace: bool = False, fixed_per_slice: bool = False):
        self.mask_func, self.seed, self.train = mask_func, int(seed), train
        self.fixed_per_slice = bool(fixed_per_slice)
        self.recon_size = tuple(recon_size) if recon_size is not None else None
        self.keep_kspace = keep_kspace

    def select_mask(self, sample: dict[str, Any], shape: tuple[int, int], index: int, epoch: int) -> torch.Tensor | None:
        """The mask for this sample (file mask > random training mask > per-file fixed mask), or None."""
        if sample.get("mask") is not None:
            mask = mask_to_tensor(sample["mask"], shape)
        elif self.mask_func is None:
            return None
        elif self.train:
            draw = 0 if self.fixed_per_slice else int(epoch)
            mask = mask_to_tensor(self.mask_func(shape, seed=(self.seed, draw, int(index)))[0], shape)
        else:
            mask = mask_to_tensor(self.mask_func(shape, seed=file_seed(str(sample["fname"])))[0], shape)
        padding = sample.get("padding")
        if padding is not None:
            left, right = int(padding[0]), int(padding[1])
            mask = mask.clone()
            mask[..., :left] = 0
            mask[..., right:] = 0
        return mask

    def kspace_and_mask(self, sample: dict[str, Any], index: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The sample's k-space as complex64 ``[C, H, W]``, its mask (see :meth:`select_mask`) and ``(H, W)``."""
        kspace = torch.as_tensor(np.asarray(sample["kspace"])).to(torch.complex64)
        if kspace.ndim == 2:
            kspace = kspace.unsqueeze(0)
        shape = (int(kspace.shape[-2]), int(kspace.shape[-1]))
        return kspace, self.select_mask(sample, shape, index, epoch), shape

    def __call__(self, sample: dict[str, Any], index: int = 0, epoch: int = 0) -> Sample:
        kspace, mask, shape = self.kspace_and_mask(sample, index, epoch)
        masked = apply_mask(kspace, mask)
        zf = rss(ifft2c(masked), dim=-3)
        size = self.recon_size or tuple(int(s) for s in (sample.get("recon_size") or shape))
        if shape[1] < size[1]:  # narrow (FLAIR) volume, as fastMRI: crop to (W, W) instead of padding the width
            size = (shape[1], shape[1])
        image = crop_or_pad(zf, size)
        image_n, mean, std = normalise(image)
        target = sample.get("target")
        has_target = target is not None
        if target is None and sample.get("mask") is None:  # fully sampled file without a stored target
            target_t, has_target = crop_or_pad(rss(ifft2c(kspace), dim=-3), size), True
        elif target is not None:
            target_t = crop_or_pad(torch.as_tensor(np.asarray(target, dtype=np.float32)), size)
        else:
            target_t = torch.zeros(size)
        noiseless = sample.get("target_noiseless")
        if noiseless is not None:
            noiseless = crop_or_pad(torch.as_tensor(np.asarray(noiseless, dtype=np.float32)), size).unsqueeze(0)
        seg = sample.get("segmentation")
        if seg is not None:  # int64: the class-index dtype of torch's losses; zero padding is label 0 (background)
            seg = crop_or_pad(torch.as_tensor(np.asarray(seg, dtype=np.int64)), size).unsqueeze(0)
        vmax = sample.get("max")
        padding = sample.get("padding")
        out = Sample(
            image=image_n.unsqueeze(0),
            target=target_t.float().unsqueeze(0),
            has_target=has_target,
            target_noiseless=noiseless,
            segmentation=seg,
            zero_filled=image.float().unsqueeze(0),
            mean=torch.tensor(mean, dtype=torch.float32),
            std=torch.tensor(std, dtype=torch.float32),
            max=float(vmax) if vmax is not None else float("nan"),
            fname=str(sample["fname"]),
            slice=int(sample["slice"]),
            acquisition=sample.get("acquisition"),
            recon_size=(int(size[0]), int(size[1])),
            padding=None if padding is None else (int(padding[0]), int(padding[1])),
        )
        if self.keep_kspace:
            scale = float(zf.abs().max())
            scale = scale if math.isfinite(scale) and scale > 0 else 1.0
            out.kspace = masked / scale
            out.mask = mask if mask is not None else torch.ones(1, 1, shape[1])
            out.scale = torch.tensor(scale, dtype=torch.float32)
            if sample.get("sens_maps") is not None:
                out.sens_maps = torch.as_tensor(np.asarray(sample["sens_maps"])).to(torch.complex64)
        return out


def denormalise(output: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Network output ``[B, 1, h, w]`` (normalised units) -> image ``[B, h, w]`` in the data's units."""
    return output[:, 0] * std.reshape(-1, 1, 1) + mean.reshape(-1, 1, 1)


def normalise_target(target: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Target ``[B, 1, h, w]`` (data units) -> the network's units: ``clamp((t - mean) / std, -6, 6)``."""
    return ((target - mean.reshape(-1, 1, 1, 1)) / std.reshape(-1, 1, 1, 1)).clamp(-6, 6)


def fixed_per_slice(mask_section: dict[str, Any] | None, default: bool = False) -> bool:
    """``fixed_per_slice`` of a config's ``mask`` section (``default`` when absent); one-line error if not a bool."""
    from mrlearn.errors import input_error

    value = (mask_section or {}).get("fixed_per_slice", default)
    if not isinstance(value, bool):
        raise input_error("mask.fixed_per_slice", f"expected true or false, got {value!r}", "e.g. fixed_per_slice: true")
    return value
