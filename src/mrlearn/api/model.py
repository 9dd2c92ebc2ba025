"""``mrlearn.load_model``: a trained checkpoint as an object that reconstructs k-space or fastMRI files.

The checkpoint is all it needs: the resolved training config stored in it (``checkpoint["mrlearn"]["config"]``)
or, for older checkpoints, the run's ``config.yaml`` beside it, or the model and method sections the checkpoint
always stores (other settings at their defaults). Inputs follow :func:`mrlearn.reconstruct`: k-space
``[C, H, W]`` or ``[S, C, H, W]`` (numpy or torch), mask None (the data's own sampling pattern: where any coil is
non-zero), ``[W]``, ``[H, W]`` or per slice; output float32 magnitudes ``[h, w]`` / ``[S, h, w]`` in data units
at the model's ``recon_size`` (the k-space size when the config has none).

Fully sampled input is undersampled first, as ``mrlearn reconstruct`` does: with the model's training mask
(its config's ``mask`` section) drawn as for evaluation, fixed per file name (fastMRI's seed
``tuple(map(ord, name))``), so the API and the CLI give the same image and score for the same file. A network
given all of k-space sees an easier problem than it was trained for, and its scores are not those of an
undersampled reconstruction; ``undersample=False`` asks for that explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def _config(checkpoint: Path, ckpt: dict[str, Any]) -> Any:
    from mrlearn.config import config_from_dict
    from mrlearn.errors import MrlearnError

    extra = ckpt.get("mrlearn") or {}
    if isinstance(extra.get("config"), dict):
        return config_from_dict(extra["config"], f"{checkpoint} (stored config)")
    try:
        from mrlearn.training.runner import config_for_checkpoint

        return config_for_checkpoint(checkpoint)
    except MrlearnError:
        pass
    if isinstance(extra.get("model"), dict) and isinstance(extra.get("method"), dict):
        return config_from_dict({"model": extra["model"], "method": extra["method"]}, f"{checkpoint} (stored model)")
    raise MrlearnError(f"{checkpoint}: the checkpoint stores no config and has no config.yaml beside it; "
                       "load it with the training config (mrlearn reconstruct --checkpoint ... --config ...)")


def acquired_block(pattern: np.ndarray) -> tuple[int, int] | None:
    """``(left, right)`` when a sampling pattern ``[H, W]`` (bool: where any coil is non-zero) is a fully sampled
    acquisition: one contiguous block of whole columns at least half the width wide (the zero columns outside it
    are fastMRI's zero padding); None for undersampled data."""
    cols = np.flatnonzero(pattern.any(axis=0))
    if cols.size == 0:
        return None
    left, right = int(cols[0]), int(cols[-1]) + 1
    if cols.size != right - left or 2 * cols.size < pattern.shape[-1] or not pattern[:, left:right].all():
        return None
    return left, right


class LoadedModel:
    """A trained method in eval mode: :meth:`reconstruct` (arrays) and :meth:`reconstruct_file` (fastMRI .h5);
    for a joint reconstruction-segmentation model (``segments``) also :meth:`reconstruct_and_segment` and
    :meth:`segment_file`, which give the labels beside the images.

    ``mask_func``: the model's training mask (config ``mask``), applied to fully sampled input (module docstring).
    """

    def __init__(self, module: torch.nn.Module, cfg: Any, device: str | torch.device = "cpu"):
        from mrlearn.training.inference import eval_mask_func, module_predictor

        self.module, self.cfg, self.device = module, cfg, device
        self.recon_size = tuple(cfg.data.recon_size) if cfg.data.recon_size else None
        self.mask_func = eval_mask_func(cfg.mask)
        self._predict = module_predictor(module, device)
        self.segments = hasattr(module, "reconstruct_and_segment")

    def _keeper(self, where: str) -> Any:
        from mrlearn.errors import input_error
        from mrlearn.training.inference import SegmentationKeeper

        if not self.segments:
            raise input_error(f"load_model(...).{where}", "this checkpoint's model reconstructs but does not segment",
                              "use a joint reconstruction-segmentation checkpoint (recon_seg models), or reconstruct()")
        return SegmentationKeeper(self.module, self.device)

    def reconstruct_and_segment(self, kspace: Any, mask: Any = None, batch_size: int = 4, *, undersample: bool = True,
                                name: str = "input") -> tuple[Any, np.ndarray]:
        """``(magnitudes, labels)`` of a joint model: the images as :meth:`reconstruct` gives them and the labels
        ``[h, w]`` / ``[S, h, w]`` (uint8 class indices, 0 = background) at the same size."""
        keeper = self._keeper("reconstruct_and_segment")
        images = self._reconstruct(kspace, mask, batch_size, undersample, name, keeper)
        labels = keeper.take(name)
        return images, labels[0] if np.ndim(images) == 2 else labels

    def segment_file(self, path: str | Path, batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` ``[S, h, w]`` of a fastMRI file through a joint model, exactly as
        ``mrlearn reconstruct`` writes ``reconstruction`` and ``segmentation`` for it."""
        keeper = self._keeper("segment_file")
        images = self._reconstruct_file(path, batch_size, True, keeper)
        return images, keeper.take(Path(path).name)

    def reconstruct(self, kspace: Any, mask: Any = None, batch_size: int = 4, *, undersample: bool = True,
                    name: str = "input") -> Any:
        """Magnitudes ``[h, w]`` or ``[S, h, w]`` (numpy in -> numpy out) of k-space ``[C, H, W]``/``[S, C, H, W]``.

        ``mask`` (binary ``[W]``, ``[H, W]`` or ``[S, H, W]``) is used as given. Without one, a slice whose samples
        are not a fully sampled block (:func:`acquired_block`) is reconstructed from them; a fully sampled slice is
        first undersampled with the model's training mask seeded by the file name ``name`` (pass the file's name to
        get exactly the image ``mrlearn reconstruct`` writes for it), unless ``undersample=False``.
        """
        return self._reconstruct(kspace, mask, batch_size, undersample, name, self._predict)

    def _reconstruct(self, kspace: Any, mask: Any, batch_size: int, undersample: bool, name: str, predict: Any) -> Any:
        """:meth:`reconstruct` with the batch predictor ``predict`` (images; a :class:`SegmentationKeeper` also keeps labels)."""
        from torch.utils.data import default_collate

        from mrlearn.data.checks import check_binary_mask, check_kspace, check_matrix, check_reconstruction
        from mrlearn.data.transforms import ReconTransform
        from mrlearn.errors import input_error

        as_numpy = not torch.is_tensor(kspace)
        k = np.asarray(kspace.cpu() if torch.is_tensor(kspace) else kspace)
        single = k.ndim == 3
        k = k[None] if single else k
        if k.ndim != 4 or k.dtype.kind != "c":
            raise input_error("kspace", f"expected complex [C, H, W] or [S, C, H, W], got {k.dtype} {k.shape}",
                              "add a coil axis (C = 1 for single-coil data)")
        if int(batch_size) < 1:
            raise input_error("batch_size", f"{batch_size!r} is below 1", "use 1 or more")
        if not isinstance(undersample, bool):
            raise input_error("undersample", f"{undersample!r} is not True or False", "pass undersample=False to use "
                              "all of fully sampled k-space")
        if not isinstance(name, str) or not Path(name).name:
            raise input_error("name", f"{name!r} is not a file name", "pass the volume's file name, e.g. name='file1000.h5'")
        check_kspace("kspace", k)  # the checks of a data file: NaN/Inf, all zero, overflow
        check_matrix("kspace", *k.shape[-2:])
        m = None if mask is None else np.asarray(mask.cpu() if torch.is_tensor(mask) else mask, dtype=np.float32)
        if m is not None:
            check_binary_mask("mask", m, slice_axis=m.ndim == 3)
        keep = bool(getattr(self.module, "keep_kspace", False))
        own = ReconTransform(None, train=False, recon_size=self.recon_size, keep_kspace=keep)
        retro = ReconTransform(self.mask_func, train=False, recon_size=self.recon_size, keep_kspace=keep)
        items = []
        for s in range(k.shape[0]):
            ms = m[s] if m is not None and m.ndim == 3 else m
            raw = {"kspace": k[s], "mask": ms, "target": None, "fname": name, "slice": s, "max": None,
                   "recon_size": self.recon_size or k.shape[-2:]}
            transform = own
            if ms is None:
                pattern = (k[s] != 0).any(axis=0)
                block = acquired_block(pattern)
                if block is not None and undersample:
                    raw["padding"], transform = block, retro  # the training mask inside the acquired columns
                elif not pattern.all():
                    raw["mask"] = pattern.astype(np.float32)
            items.append(transform(raw, s, 0))
        out = [predict(default_collate(items[i : i + batch_size])) for i in range(0, len(items), batch_size)]
        result = torch.cat(out).float()
        zero_filled = torch.cat([item.zero_filled for item in items]).numpy()
        check_reconstruction("load_model(...).reconstruct", result.numpy(), "the loaded model",
                             "its weights are not usable (diverged or collapsed): use another checkpoint", zero_filled)
        result = result[0] if single else result
        return result.numpy() if as_numpy else result

    def reconstruct_file(self, path: str | Path, batch_size: int = 4, *, undersample: bool = True) -> np.ndarray:
        """Reconstruct a fastMRI file -> ``[S, h, w]`` float32, exactly as ``mrlearn reconstruct`` does with the
        model's training mask: the file's own ``mask`` when it has one, else (fully sampled) the training mask
        fixed per file name inside the header's acquired columns; ``undersample=False``: all of its k-space."""
        return self._reconstruct_file(path, batch_size, undersample, self._predict)

    def _reconstruct_file(self, path: str | Path, batch_size: int, undersample: bool, predict: Any) -> np.ndarray:
        """:meth:`reconstruct_file` with the batch predictor ``predict``."""
        from mrlearn.data.checks import check_reconstruction
        from mrlearn.data.fastmri import read_kspace, read_mask
        from mrlearn.errors import input_error
        from mrlearn.training.inference import eval_dataset, iterate_volumes

        if int(batch_size) < 1:
            raise input_error("batch_size", f"{batch_size!r} is below 1", "use 1 or more")
        if not undersample:
            kspace = read_kspace(path)
            kspace = kspace[:, None] if kspace.ndim == 3 else kspace
            return self._reconstruct(kspace, read_mask(path), batch_size, False, Path(path).name, predict)
        dataset = eval_dataset(path, self.mask_func, self.recon_size, bool(getattr(self.module, "keep_kspace", False)))
        for _fname, pred, _target, zf in iterate_volumes(dataset, predict, int(batch_size), progress=False):
            check_reconstruction(path, pred, "the loaded model",
                                 "its weights are not usable (diverged or collapsed): use another checkpoint", zf)
            return pred.astype(np.float32, copy=False)
        raise input_error(path, "holds no slices", "pass a fastMRI volume with k-space")


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a trained checkpoint (``best.ckpt``/``last.ckpt``) as a :class:`LoadedModel`; no config file needed."""
    from mrlearn.engine.checkpoint import load_checkpoint, plugins_needed
    from mrlearn.training.runner import load_module

    from mrlearn.devices import resolve_device
    from mrlearn.errors import input_error

    if not isinstance(checkpoint, (str, Path)) or not str(checkpoint):
        raise input_error("load_model", f"{checkpoint!r} is not a checkpoint path", "pass e.g. runs/x/checkpoints/best.ckpt")
    device = resolve_device(device, "load_model(device=...)")
    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    with plugins_needed(ckpt, path):
        cfg = _config(path, ckpt)
        return LoadedModel(load_module(path, cfg), cfg, device)
