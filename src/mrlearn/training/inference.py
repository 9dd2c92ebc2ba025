"""Reconstruct whole volumes of a data folder with a trained module (no Lightning loop).

:func:`iterate_volumes` runs a ``predict(batch) -> [B, h, w]`` function over a folder's slices in volume order
and yields one volume at a time (``fname``, prediction ``[S, h, w]``, target ``[S, h, w]`` or None, zero-filled
``[S, h, w]``), so memory stays at about one volume. Masks: the file's own ``mask`` when it has one, else the
retrospective mask fixed per file name (``mask_func(shape, seed=file_seed(fname))``, ``physics.masks``).

Classical methods live in :mod:`mrlearn.recon` (``mrlearn.recon.folder`` runs them over a folder without this
module; its ``slice_predictor`` has the same ``predict`` shape).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mrlearn.data.dataset import SliceDataset
from mrlearn.data.transforms import ReconTransform
from mrlearn.training.data import TransformedDataset, VolumeSampler

Predict = Callable[[dict[str, Any]], torch.Tensor]


def eval_mask_func(mask_section: dict[str, Any] | None) -> Any:
    """The MaskFunc of a config's ``mask`` section for evaluation (``fixed_per_slice``, a training-only key, is
    left out); None without a section. The mask of a fully sampled file is then ``mask_func(shape,
    seed=file_seed(fname))``, the same in ``mrlearn reconstruct``, validation and ``load_model(...).reconstruct``."""
    from mrlearn import registry

    if mask_section is None:
        return None
    return registry.build("mask", {k: v for k, v in mask_section.items() if k != "fixed_per_slice"}, "mask")


def eval_dataset(data: str | Path, mask_func: Any, recon_size: tuple[int, int] | None = None, keep_kspace: bool = False,
                 contrasts: list[str] | None = None) -> TransformedDataset:
    """A folder's slices through the evaluation transform (fixed per-file masks, or the files' own masks)."""
    slices = SliceDataset(data, contrasts=contrasts, target_size=recon_size)
    return TransformedDataset(slices, ReconTransform(mask_func, train=False, recon_size=recon_size, keep_kspace=keep_kspace))


def module_predictor(module: torch.nn.Module, device: str | torch.device = "cpu") -> Predict:
    """``predict`` of a trained :class:`~mrlearn.training.module.ReconModule` (no grad, eval mode)."""
    module = module.to(device).eval()

    def predict(batch: dict[str, Any]) -> torch.Tensor:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad():
            return module.reconstruct(batch).float().cpu()

    return predict


class SegmentationKeeper:
    """``predict`` of a module that also segments (``reconstruct_and_segment(batch) -> (image [B, h, w], labels
    [B, h, w])``): returns the images and keeps the labels per file; :meth:`take` gives a volume's labels
    ``[S, h, w]`` uint8 in slice order once :func:`iterate_volumes` has yielded that volume."""

    def __init__(self, module: torch.nn.Module, device: str | torch.device = "cpu"):
        self.module = module.to(device).eval()
        self.device = device
        self.labels: dict[str, dict[int, np.ndarray]] = {}

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad():
            image, labels = self.module.reconstruct_and_segment(batch)
        for i, (fname, sl) in enumerate(zip(batch["fname"], batch["slice"])):
            self.labels.setdefault(fname, {})[int(sl)] = labels[i].cpu().numpy().astype(np.uint8)
        return image.float().cpu()

    def take(self, fname: str) -> np.ndarray:
        slices = self.labels.pop(fname)
        return np.stack([slices[k] for k in sorted(slices)])


def iterate_volumes(dataset: TransformedDataset, predict: Predict, batch_size: int = 1, num_workers: int = 0,
                    progress: bool = True, label: str = "reconstruct") -> Iterator[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]]:
    """Yield ``(fname, pred, target, zero_filled)`` volumes ``[S, h, w]`` (slices in order)."""
    sampler = VolumeSampler(dataset.slices)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    total = len(sampler)
    current: str | None = None
    parts: dict[str, list] = {"pred": [], "target": [], "zf": [], "has": []}
    done, t0 = 0, time.perf_counter()

    def flush() -> tuple[str, np.ndarray, np.ndarray | None, np.ndarray]:
        pred = np.stack(parts["pred"])
        target = np.stack(parts["target"]) if all(parts["has"]) else None
        zf = np.stack(parts["zf"])
        for v in parts.values():
            v.clear()
        return current, pred, target, zf  # type: ignore[return-value]

    for batch in loader:
        pred = predict(batch)
        for i, fname in enumerate(batch["fname"]):
            if current is not None and fname != current:
                yield flush()
            current = fname
            parts["pred"].append(pred[i].numpy())
            parts["target"].append(batch["target"][i, 0].numpy())
            parts["zf"].append(batch["zero_filled"][i, 0].numpy())
            parts["has"].append(bool(batch["has_target"][i]))
        done += len(batch["fname"])
        if progress:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            print(f"\r{label}: {done}/{total} slices ({rate:.1f} slices/s)", end="", file=sys.stderr, flush=True)
    if current is not None:
        yield flush()
    if progress:
        print(file=sys.stderr)
