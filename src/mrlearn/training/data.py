"""One LightningDataModule for every method: SliceDataset splits + ``data.transforms.ReconTransform``.

Samplers (no Lightning distributed sampler: ``use_distributed_sampler=False``):
  * :class:`EpochSampler` (training): the order is a permutation fixed by ``(seed, epoch)``; under DDP rank
    ``r`` of ``R`` takes ``order[r::R]`` (the order is wrapped around to a multiple of ``R``), so a global batch of
    ``R x batch_size`` holds the same slices as one process with ``batch_size x R``. It yields ``(index, epoch)``
    keys, so the per-sample random mask is seeded by ``(seed, epoch, index)`` even in worker processes.
    Resumption: :meth:`EpochSampler.resume_at` skips the batches of the interrupted epoch already trained
    (Lightning 2.x restores loop counters and the global step but not a plain sampler's position).
  * :class:`VolumeSampler` (validation/test): whole volumes per rank (round-robin by volume), slices in order,
    so each rank can finish per-volume metrics by itself; the results are gathered afterwards.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mrlearn import registry
from mrlearn.config import ExperimentConfig
from mrlearn.data.dataset import H5_SUFFIXES, SliceDataset, list_volumes
from mrlearn.data.layout import describe_root, fastmri_folders
from mrlearn.data.transforms import ReconTransform, fixed_per_slice
from mrlearn.data.workers import loader_workers
from mrlearn.errors import input_error


class TransformedDataset(Dataset):
    """``SliceDataset`` + transform; items are addressed by ``index`` or ``(index, epoch)``."""

    def __init__(self, slices: SliceDataset, transform: ReconTransform):
        self.slices, self.transform = slices, transform

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (key, 0) if isinstance(key, (int, np.integer)) else key
        return self.transform(self.slices[int(index)], int(index), int(epoch))


class EpochSampler(Sampler):
    """Deterministic shuffled order per ``(seed, epoch)``, sharded by rank; yields ``(index, epoch)``."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1, batch_size: int = 1):
        self.n, self.seed, self.shuffle = n, int(seed), shuffle
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already done in it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def per_rank(self) -> int:
        return math.ceil(self.n / self.world_size)

    def batches_per_epoch(self) -> int:
        return math.ceil(self.per_rank() / self.batch_size)

    def resume_at(self, global_step: int) -> None:
        """Skip what a run that stopped after ``global_step`` optimizer steps already trained on."""
        nb = self.batches_per_epoch()
        self._resume = (global_step // nb, global_step % nb) if nb else None

    def order(self, epoch: int) -> np.ndarray:
        """This rank's indices for ``epoch``."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, 7919, int(epoch)]).permutation(self.n)
        else:
            order = np.arange(self.n)
        total = self.per_rank() * self.world_size
        order = np.resize(order, total)  # wrap around so every rank has the same number of samples
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, 0
        if self._resume is not None:
            epoch, done = self._resume  # the iterator may be created before Lightning calls set_epoch
            self._resume = None
            self.epoch, skip = epoch, done * self.batch_size
        for i in self.order(epoch)[skip:]:
            yield int(i), epoch

    def __len__(self) -> int:
        return self.per_rank()


class VolumeSampler(Sampler):
    """Validation/test order: this rank's volumes (round-robin), each volume's slices in order."""

    def __init__(self, slices: SliceDataset, rank: int = 0, world_size: int = 1):
        keys = [slices.sample_key(i) for i in range(len(slices))]
        names = sorted({k[0] for k in keys})
        mine = set(names[rank::world_size])
        self.indices = sorted((i for i, k in enumerate(keys) if k[0] in mine), key=lambda i: keys[i])
        self.expected = {}  # fname -> number of slices of that volume in the dataset
        for name, _ in keys:
            self.expected[name] = self.expected.get(name, 0) + 1

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def resolve_root(cfg: ExperimentConfig) -> Path:
    """The data root: ``cfg.data.root`` or the embedded dataset of ``cfg.data.embedded`` (built and cached on
    first use)."""
    if cfg.data.root is None:
        from mrlearn.config import embedded_options
        from mrlearn.data.simulate import default_dataset

        return Path(default_dataset(embedded_options(cfg.data)))
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise input_error("data.root", f"{root} is not a folder", "set it to a folder of fastMRI volumes (--set data.root=PATH)")
    return root


_SAID: set[str] = set()


def say_once(note: str | None) -> None:
    """Print a note about the data set-up on stderr, once per process."""
    if note and note not in _SAID:
        _SAID.add(note)
        print(f"mrlearn: note: {note}", file=sys.stderr, flush=True)


def split_folders(cfg: ExperimentConfig, root: Path) -> dict[str, str]:
    """The split folder names to read in ``root``: the config's, or fastMRI's other coil kind when the root holds
    only that (:func:`mrlearn.data.layout.fastmri_folders`; the switch is said once)."""
    d = cfg.data
    folders, note = fastmri_folders(root, {"train": d.train, "val": d.val, "test": d.test})
    say_once(note)
    return folders


def resolve_data_folders(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``data.train/val/test`` as :func:`split_folders` finds them (so the run's config.yaml names
    the folders it read); unchanged for the embedded dataset or a root that is not a folder."""
    if cfg.data.root is None or not Path(cfg.data.root).expanduser().is_dir():
        return cfg
    folders = split_folders(cfg, Path(cfg.data.root).expanduser())
    if folders == {"train": cfg.data.train, "val": cfg.data.val, "test": cfg.data.test}:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **folders))


def split_dataset(cfg: ExperimentConfig, split: str, transform: ReconTransform | None = None, **kw: Any) -> SliceDataset:
    """The slices of one split: the ``root/<split folder>`` or, without split folders, a fixed split by subject
    (:mod:`mrlearn.data.subjects`: the same for every run seed)."""
    d = cfg.data
    root = resolve_root(cfg)
    folders = split_folders(cfg, root)
    folder = root / folders[split]
    subset: dict[str, Any] = {}
    if split == "train":
        subset = dict(volume_fraction=d.volume_fraction if d.volume_fraction < 1 else None, volume_count=d.volume_count,
                      slice_fraction=d.slice_fraction if d.slice_fraction < 1 else None, slice_count=d.slice_count)
    common = dict(contrasts=d.contrasts, seed=cfg.seed, target_size=tuple(d.recon_size) if d.recon_size else None,
                  cache_mb=d.cache_mb, **subset, **kw)
    if folder.is_dir():
        return SliceDataset(folder, **common)
    present = [name for name in folders.values() if (root / name).is_dir()]
    if present:  # some split folders but not this one: not a flat folder to split by volume
        raise input_error(folder, f"no such split folder ({root} has {', '.join(f'{p}/' for p in present)} only)",
                          f"add {folder.name}/ with its volumes, or set data.{split} to the folder to use")
    if root.is_dir() and not any(p.is_file() and p.suffix.lower() in H5_SUFFIXES for p in root.iterdir()):
        raise input_error("data.root", f"{root} has no {folder.name}/ folder (data.{split}) and no .h5 volumes of its "
                          f"own to split by volume; it {describe_root(root)}",
                          f"set data.root to the folder that holds {folders['train']}/ and {folders['val']}/, or "
                          f"data.train/data.val/data.test to the folder names it has")
    list_volumes(root)  # a clear error for what remains (e.g. a file name that is not UTF-8)
    return SliceDataset(root, split=split, split_fractions=tuple(d.split_fractions), **common)


class ReconDataModule(L.LightningDataModule):
    """Train/val/test loaders for a config. ``keep_kspace``: keep masked k-space, mask and scale in samples.

    ``transform_factory(mask_func, split) -> transform`` replaces the default ``ReconTransform`` for methods whose
    samples differ (a method provides it as ``build_transform``; e.g. the layer-wise SENSE input/target).
    """

    def __init__(self, cfg: ExperimentConfig, keep_kspace: bool = False,
                 transform_factory: Callable[[Any, str], Any] | None = None):
        super().__init__()
        self.cfg = cfg
        self.keep_kspace = keep_kspace
        self.transform_factory = transform_factory
        self.mask_func = registry.build("mask", {k: v for k, v in cfg.mask.items() if k != "fixed_per_slice"}, "mask")
        self.datasets: dict[str, TransformedDataset] = {}
        self.train_sampler: EpochSampler | None = None
        self._resume_step: int | None = None

    def resume_at(self, global_step: int) -> None:
        """Make the training sampler skip the batches a resumed run already did."""
        self._resume_step = int(global_step)

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def dataset(self, split: str) -> TransformedDataset:
        if split not in self.datasets:
            recon = tuple(self.cfg.data.recon_size) if self.cfg.data.recon_size else None
            if self.transform_factory is not None:
                transform = self.transform_factory(self.mask_func, split)
            else:
                transform = ReconTransform(self.mask_func, seed=self.cfg.seed, train=split == "train", recon_size=recon,
                                           keep_kspace=self.keep_kspace,
                                           fixed_per_slice=fixed_per_slice(self.cfg.mask))
            self.datasets[split] = TransformedDataset(split_dataset(self.cfg, split), transform)
        return self.datasets[split]

    def _loader(self, dataset: Dataset, sampler: Sampler, batch_size: int) -> DataLoader:
        nw = loader_workers(self.cfg.data.num_workers)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=nw,
                          persistent_workers=nw > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        rank, world = self._rank()
        self.train_sampler = EpochSampler(len(ds), self.cfg.seed, True, rank, world, self.cfg.data.batch_size)
        if self._resume_step:
            self.train_sampler.resume_at(self._resume_step)
            self._resume_step = None
        return self._loader(ds, self.train_sampler, self.cfg.data.batch_size)

    def eval_loader(self, split: str) -> DataLoader:
        ds = self.dataset(split)
        rank, world = self._rank()
        sampler = VolumeSampler(ds.slices, rank, world)
        return self._loader(ds, sampler, self.cfg.data.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader("test")
