"""A classical method over a folder of fastMRI volumes, without the training engine (no Lightning, no DataLoader).

Slices come from :class:`mrlearn.data.dataset.SliceDataset` (raw samples) and get their mask from
:meth:`mrlearn.data.transforms.ReconTransform.kspace_and_mask`: the file's own ``mask`` when it has one, else the
retrospective mask fixed per file name. Each volume is reconstructed in one :func:`mrlearn.recon.reconstruct` call
(``[S, C, H, W]``, slice batches inside) and cropped to the ``recon_size`` option when given, else to the file's ``recon_size`` (fastMRI submission
size), or kept at the matrix size when the file has none. :func:`iterate_folder` yields ``(fname, magnitude [S, h, w],
target [S, h, w] or None)`` one volume at a time (errors and warnings of a volume name its file); :func:`slice_predictor` adapts a method to the batch-dict
``predict`` of :mod:`mrlearn.training.inference` (the demo uses it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrlearn.errors import MrlearnError
from mrlearn.recon.driver import reconstruct, split_options


def _volume_order(slices: Any) -> list[list[int]]:
    """Dataset indices grouped by volume (file name order), slices in order."""
    keys = [slices.sample_key(i) for i in range(len(slices))]
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    groups: dict[str, list[int]] = {}
    for i in order:
        groups.setdefault(keys[i][0], []).append(i)
    return list(groups.values())


def _reconstruct_volume(fname: str, ksp: torch.Tensor, msk: torch.Tensor, method: str, sens: torch.Tensor | None,
                        options: dict[str, Any]) -> np.ndarray:
    """One volume through :func:`reconstruct`; its one-line errors and its warnings name the file."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            recon = reconstruct(ksp, msk, method, sens, **options).numpy()
        except MrlearnError as exc:
            raise MrlearnError(f"{Path(fname).name}: {exc}") from None
    for w in caught:
        warnings.warn_explicit(f"{Path(fname).name}: {w.message}", w.category, w.filename, w.lineno)
    return recon


def iterate_folder(data: str | Path, method: str, options: dict[str, Any] | None = None, mask_func: Any = None,
                   progress: bool = True) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    """Yield ``(fname, reconstruction [S, h, w] float32, target [S, h, w] or None)`` per volume of ``data``."""
    from mrlearn.data.dataset import SliceDataset
    from mrlearn.data.transforms import ReconTransform

    options = dict(options or {})
    split_options(method, options, "--set")  # fail before reading any data
    slices = SliceDataset(data)
    transform = ReconTransform(mask_func, train=False)
    groups = _volume_order(slices)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(slices), desc=f"reconstruct ({method})", unit="slice", dynamic_ncols=True)
    try:
        for indices in groups:
            raws = [slices[i] for i in indices]
            kspace, masks, maps = [], [], []
            for i, raw in zip(indices, raws):
                k, m, _ = transform.kspace_and_mask(raw, i, 0)
                kspace.append(k)
                masks.append(m if m is not None else torch.ones(1, 1, k.shape[-1]))
                maps.append(None if raw.get("sens_maps") is None else torch.as_tensor(np.asarray(raw["sens_maps"])))
            ksp = torch.stack(kspace)
            shapes = {tuple(m.shape) for m in masks}
            msk = torch.stack([m.expand(max(shapes)) for m in masks]) if len(shapes) > 1 else torch.stack(masks)
            sens = torch.stack(maps) if all(m is not None for m in maps) else None
            size = raws[0].get("recon_size")
            opts = dict(options)
            if size is not None and "recon_size" not in options:  # the user's recon_size wins over the file's
                opts["recon_size"] = tuple(int(v) for v in size)
            recon = _reconstruct_volume(str(raws[0]["fname"]), ksp, msk, method, sens, opts)
            targets = [r.get("target") for r in raws]
            target = np.stack([np.asarray(t, dtype=np.float32) for t in targets]) if all(t is not None for t in targets) else None
            if bar is not None:
                bar.update(len(indices))
            yield str(raws[0]["fname"]), recon, target
    finally:
        if bar is not None:
            bar.close()
        slices.close()


def slice_predictor(method: str, options: dict[str, Any] | None = None,
                    solver_log: list | None = None) -> Callable[[dict[str, Any]], torch.Tensor]:
    """``predict(batch) -> [B, h, w]`` for batches of the evaluation transform (``keep_kspace=True``).

    ``zero-filled`` without options reuses the transform's zero-filled image; other methods undo the transform's
    k-space normalisation (``kspace * scale``) and crop to the zero-filled image's size. ``solver_log`` receives
    the iterative solver's stopping record of every batch (:mod:`mrlearn.recon.stopping`).
    """
    options = dict(options or {})
    split_options(method, options, "method options")
    if method == "zero-filled" and not options:
        return lambda batch: batch["zero_filled"][:, 0].float()

    def predict(batch: dict[str, Any]) -> torch.Tensor:
        ksp = batch["kspace"] * batch["scale"].reshape(-1, 1, 1, 1).to(batch["kspace"].real.dtype)
        maps = batch.get("sens_maps")
        size = tuple(batch["zero_filled"].shape[-2:])
        return reconstruct(ksp, batch["mask"], method, maps, recon_size=size, solver_log=solver_log, **options)

    return predict
