"""Bad input caught before (or translated during) a fit: one line naming the file, key or option, never a traceback.

* :func:`check_targets`: supervised training on files without targets (test-style files: k-space and mask only)
  would train against zeros; refused, naming the file.
* :func:`check_world_size`: validation shards whole volumes over processes; more processes than validation
  volumes would leave a process without data (and gloo errors many lines long).
* :func:`fit_errors`: known failures inside a fit become one-line errors: slices of different sizes in one batch,
  a model that cannot run on the image size, an optimizer update that overflows float32 (a huge learning rate).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from mrlearn.errors import input_error


def check_targets(dataset: Any, split: str = "train") -> None:
    """Refuse volumes of ``dataset`` (a ``SliceDataset``) that have no reference image to train against."""
    for info in getattr(dataset, "volumes", []):
        if getattr(info, "target_key", "x") is None and getattr(info, "has_mask", False):
            raise input_error(info.path, f"no target image in this {split} file (k-space and mask only, like fastMRI "
                              "test files); supervised training needs fully sampled references",
                              "use a self-supervised method (method.name=ssdu) or training files with targets")
        vmax = (getattr(info, "attrs", None) or {}).get("max")
        if getattr(info, "target_key", None) is not None and vmax is not None and float(vmax) <= 0:
            raise input_error(info.path, f"its target is all zero or negative (attr max {float(vmax):.3g}): nothing to "
                              f"train against in this {split} file", "exclude it or fix the target")


def volume_count(dataset: Any) -> int:
    """Number of distinct volumes in a ``SliceDataset``."""
    volumes = getattr(dataset, "volumes", None)
    if volumes is not None:
        return len(volumes)
    return len({dataset.sample_key(i)[0] for i in range(len(dataset))})


def check_world_size(world_size: int, dataset: Any, split: str = "val") -> None:
    """Every process needs at least one whole ``split`` volume (volumes are sharded, never split)."""
    n = volume_count(dataset)
    if world_size > n:
        raise input_error(f"--devices {world_size}", f"{n} {split} volume(s) for {world_size} processes; each process "
                          f"validates whole volumes", f"use --devices {max(n, 1)} or fewer, or more {split} volumes")


_SIZE_PATTERNS = ("Kernel size can't be greater", "Input size", "Padding size should be less", "output size is too small",
                  "Calculated padded input size")


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else exc.__class__.__name__


@contextlib.contextmanager
def fit_errors(cfg: Any) -> Iterator[None]:
    """Translate known ``RuntimeError``\\ s of a fit into one-line :class:`~mrlearn.errors.MrlearnError`\\ s."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        if "stack expects each tensor to be equal size" in text or "equal size" in text and "stack" in text:
            raise input_error("data.batch_size", f"slices of different matrix sizes cannot share a batch ({_first(exc)})",
                              "set data.batch_size=1 (or data.recon_size for image-domain methods)") from None
        if "without overflow" in text:
            lr = (getattr(cfg, "optim", None) or {}).get("lr")
            raise input_error("optim.lr", f"{lr} makes the optimizer update overflow float32 ({_first(exc)})",
                              "use a far smaller learning rate (e.g. 1e-3)") from None
        if any(p in text for p in _SIZE_PATTERNS):
            raise input_error("model", f"cannot run on these images ({_first(exc)})",
                              "use larger images (data.recon_size) or a smaller network (e.g. model.num_pool_layers)") from None
        raise
