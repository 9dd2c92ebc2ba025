"""Multi-task data: one dataset per task, a task index per sample, and the three batching strategies.

* ``shuffled``: one permutation of all tasks' samples per ``(seed, epoch)``, cut into batches of ``batch_size``
  (tasks mix as their sizes dictate; a batch may lack a task).
* ``stratified``: every batch holds ``n_t`` samples of task ``t`` with ``n_t`` proportional to ``tasks.ratio``
  (largest remainder, at least 1 each, ``batch_size`` in total when it allows); each task is drawn from its own
  seeded permutation, recycled when exhausted (the scarce task is oversampled); an epoch is
  ``max_t ceil(N_t / n_t)`` batches.
* ``accumulate``: every step takes ``batch_size`` samples of EACH task; the module runs forward and backward per
  task (gradient accumulation over tasks) before one optimizer step.

Sample keys are ``(global index, draw)``; the transform's random mask is seeded by ``(seed, draw, global index)``,
so tasks never share a mask stream, and ``draw`` counts the passes over a task's samples (``epoch`` times the
passes per epoch, plus the pass), so a slice recycled within an epoch gets a new mask on each pass. Samples gain
``task`` (int) besides ``data.transforms``' keys (``keep_kspace=True``). No Lightning in the samplers;
:class:`MultiTaskDataModule` wraps them.

Several processes (DDP, ``world`` of them): the sampler builds the global batches of ``world * batch_size``
samples exactly as one process with that batch size would, and process ``rank`` takes ``batch[rank::world]``;
validation/test volumes are dealt round-robin by name (each process scores whole volumes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mrlearn import registry
from mrlearn.config import ExperimentConfig
from mrlearn.data.dataset import SliceDataset
from mrlearn.data.transforms import ReconTransform
from mrlearn.data.workers import loader_workers
from mrlearn.mtl.config import TaskSpec, tasks_config
from mrlearn.training.data import split_dataset


def task_config(cfg: ExperimentConfig, spec: TaskSpec, split: str) -> ExperimentConfig:
    """``cfg`` with its data section narrowed to one task (subset keys only for the training split)."""
    d = cfg.data
    changes: dict[str, Any] = {"contrasts": spec.contrasts if spec.contrasts is not None else d.contrasts}
    if spec.root is not None:
        changes["root"] = spec.root
    if split == "train":
        changes.update(volume_fraction=spec.volume_fraction, volume_count=spec.volume_count,
                       slice_fraction=spec.slice_fraction, slice_count=spec.slice_count)
    return dataclasses.replace(cfg, data=dataclasses.replace(d, **changes))


class MultiTaskDataset(Dataset):
    """The tasks' slice datasets end to end; item ``(global index, draw)`` -> transformed sample + ``task``."""

    def __init__(self, datasets: list[SliceDataset], transform: ReconTransform):
        self.datasets, self.transform = datasets, transform
        self.sizes = [len(d) for d in datasets]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        t = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return t, int(index - self.offsets[t])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, draw = (key, 0) if isinstance(key, (int, np.integer)) else key
        t, local = self.locate(int(index))
        sample = self.transform(self.datasets[t][local], int(index), int(draw))
        sample["task"] = t
        return sample


def stratified_counts(batch_size: int, ratio: list[float]) -> list[int]:
    """Samples per task in a batch: proportional to ``ratio`` (largest remainder), at least one each."""
    r = np.asarray(ratio, dtype=np.float64)
    total = max(int(batch_size), r.size)
    raw = r / r.sum() * total
    counts = np.maximum(np.floor(raw).astype(int), 1)
    while counts.sum() < total:
        counts[int(np.argmax(raw - counts))] += 1
    while counts.sum() > total:
        j = int(np.argmax(np.where(counts > 1, counts - raw, -np.inf)))
        counts[j] -= 1
    return counts.tolist()


class MultiTaskBatchSampler(Sampler):
    """Batches of ``(global index, draw)`` keys for a strategy (see the module docstring); deterministic."""

    def __init__(self, sizes: list[int], strategy: str, batch_size: int, seed: int, ratio: list[float] | None = None,
                 rank: int = 0, world: int = 1, counts: list[int] | None = None):
        self.sizes, self.strategy, self.seed = list(sizes), strategy, int(seed)
        self.rank, self.world = int(rank), int(world)
        self.batch_size = int(batch_size) * self.world  # the global batch
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        if counts is not None:  # per-task samples per batch given outright (a task's share of a larger batch)
            if len(counts) != len(self.sizes) or min(counts) < 1:
                raise ValueError(f"counts {counts} do not give every one of {len(self.sizes)} tasks a sample")
            self.counts = [int(c) * self.world for c in counts]
        elif strategy == "accumulate":
            self.counts = [self.batch_size] * len(sizes)
        else:
            self.counts = stratified_counts(self.batch_size, ratio or [1.0] * len(sizes))
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def sampler(self) -> "MultiTaskBatchSampler":
        """Itself: Lightning sets each epoch through ``loader.batch_sampler.sampler.set_epoch`` (it never calls the
        batch sampler's own), so without this every epoch would repeat epoch 0's batches."""
        return self

    def resume_at(self, global_step: int) -> None:
        """Skip what a run that stopped after ``global_step`` optimizer steps (one per batch) already trained on."""
        n = len(self)
        self._resume = (global_step // n, global_step % n) if n else None

    def __len__(self) -> int:
        if self.strategy == "shuffled":
            return math.ceil(sum(self.sizes) / self.batch_size)
        return max(math.ceil(n / c) for n, c in zip(self.sizes, self.counts))

    def batches(self, epoch: int) -> list[list[int]]:
        """The global indices of every batch of ``epoch``."""
        return [[i for i, _ in batch] for batch in self.keys(epoch)]

    def passes(self) -> int:
        """Passes over its samples that the most recycled task makes in one epoch (1 for ``shuffled``)."""
        if self.strategy == "shuffled":
            return 1
        return max(math.ceil(len(self) * c / n) for n, c in zip(self.sizes, self.counts))

    def keys(self, epoch: int) -> list[list[tuple[int, int]]]:
        """Every batch of ``epoch`` as ``(global index, draw)`` keys; ``draw = epoch * passes() + p`` for the
        ``p``-th pass over a task's samples within the epoch, so a recycled slice gets a fresh mask on every pass
        (a task that is not recycled draws ``epoch * passes()``; ``draw == epoch`` when no task is recycled)."""
        per_epoch = self.passes()
        if self.strategy == "shuffled":
            order = np.random.default_rng([self.seed, 104729, epoch]).permutation(int(self.offsets[-1]))
            cuts = range(0, order.size, self.batch_size)
            return [[(int(i), epoch) for i in order[j : j + self.batch_size]] for j in cuts]
        n_batches = len(self)
        streams = []
        for t, (n, c) in enumerate(zip(self.sizes, self.counts)):
            rng = np.random.default_rng([self.seed, 104729, epoch, t])
            need = n_batches * c
            reps = [rng.permutation(n) for _ in range(math.ceil(need / n))]
            draws = np.repeat(np.arange(len(reps)), n) + epoch * per_epoch
            streams.append(list(zip((np.concatenate(reps)[:need] + self.offsets[t]).tolist(), draws[:need].tolist())))
        return [[key for s, c in zip(streams, self.counts) for key in s[b * c : (b + 1) * c]] for b in range(n_batches)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        skip = 0
        if self._resume is not None:  # the iterator may be created before Lightning calls set_epoch
            (self.epoch, skip), self._resume = self._resume, None
        for batch in self.keys(self.epoch)[skip:]:
            yield [(int(i), int(d)) for i, d in batch[self.rank :: self.world]]


class EvalSampler(Sampler):
    """Validation/test order: this process's volumes (round-robin by name), slices in order; ``expected``
    slice counts per file (all files)."""

    def __init__(self, dataset: MultiTaskDataset, rank: int = 0, world: int = 1):
        keys = []
        for t, d in enumerate(dataset.datasets):
            keys.extend((d.sample_key(i), int(dataset.offsets[t]) + i) for i in range(len(d)))
        mine = set(sorted({k[0] for k, _ in keys})[rank::world])
        self.indices = [i for k, i in sorted(keys) if k[0] in mine]
        self.expected: dict[str, int] = {}
        for (name, _), _ in keys:
            self.expected[name] = self.expected.get(name, 0) + 1

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class MultiTaskDataModule(L.LightningDataModule):
    """Train/val/test loaders over the ``tasks`` section (single process; ``data.batch_size`` per batch/task)."""

    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        self.cfg = cfg
        self.tasks = tasks_config(cfg)
        self.mask_func = registry.build("mask", {k: v for k, v in cfg.mask.items() if k != "fixed_per_slice"}, "mask")
        self.datasets: dict[str, MultiTaskDataset] = {}
        self.train_sampler: MultiTaskBatchSampler | None = None
        self._resume_step: int | None = None

    def resume_at(self, global_step: int) -> None:
        """Make the training sampler skip the batches a resumed run already did (mid-epoch checkpoints)."""
        self._resume_step = int(global_step)

    def dataset(self, split: str) -> MultiTaskDataset:
        if split not in self.datasets:
            recon = tuple(self.cfg.data.recon_size) if self.cfg.data.recon_size else None
            transform = ReconTransform(self.mask_func, seed=self.cfg.seed, train=split == "train", recon_size=recon,
                                       keep_kspace=True)
            parts = [split_dataset(task_config(self.cfg, spec, split), split) for spec in self.tasks.specs]
            self.datasets[split] = MultiTaskDataset(parts, transform)
        return self.datasets[split]

    def task_of_file(self, split: str) -> dict[str, int]:
        """File name -> task index for the volumes of ``split``."""
        ds = self.dataset(split)
        return {v.path.name: t for t, d in enumerate(ds.datasets) for v in d.volumes}

    def sizes(self) -> list[int]:
        return self.dataset("train").sizes

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (0, 1) if trainer is None else (int(trainer.global_rank), int(trainer.world_size))

    def make_train_sampler(self) -> MultiTaskBatchSampler:
        rank, world = self._rank()
        return MultiTaskBatchSampler(self.sizes(), self.tasks.strategy, self.cfg.data.batch_size, self.cfg.seed,
                                     self.tasks.ratio, rank, world, getattr(self.tasks, "phase_counts", None))

    def _loader(self, dataset: Dataset, **kw: Any) -> DataLoader:
        nw = loader_workers(self.cfg.data.num_workers)
        return DataLoader(dataset, num_workers=nw, persistent_workers=nw > 0, pin_memory=torch.cuda.is_available(), **kw)

    def train_dataloader(self) -> DataLoader:
        self.train_sampler = self.make_train_sampler()
        if self._resume_step:
            self.train_sampler.resume_at(self._resume_step)
            self._resume_step = None
        return self._loader(self.dataset("train"), batch_sampler=self.train_sampler)

    def eval_loader(self, split: str, all_volumes: bool = False) -> DataLoader:
        """``split``'s loader: this process's volumes, or every volume with ``all_volumes`` (final scoring)."""
        ds = self.dataset(split)
        rank, world = (0, 1) if all_volumes else self._rank()
        return self._loader(ds, sampler=EvalSampler(ds, rank, world), batch_size=self.cfg.data.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader("test")
