"""Batches of simulated signals for one process or several (DDP), with the same global batches either way.

:class:`SignalBatches` yields lists of row indices (a whole batch at a time, so a ``TensorDataset`` gathers each
batch with one indexing operation). Training order: a permutation fixed by ``(seed, epoch)``; under DDP rank ``r``
of ``R`` takes ``order[r::R]`` and cuts it into batches of ``batch_size`` (per process). Global batch ``k`` of ``R``
processes with ``batch_size`` therefore holds exactly the rows of batch ``k`` of one process with
``R x batch_size``; DDP averages the per-rank mean gradients, which equals the one-process mean when the number of
rows is a multiple of ``R`` (otherwise the order is wrapped around, repeating fewer than ``R`` rows per epoch, as
torch's ``DistributedSampler`` does). Validation (``shuffle=False, pad=False``): rank ``r`` scores rows ``r::R``
once; the losses are summed over ranks afterwards (:class:`~mrlearn.qmri.module.QmriNetModule`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class SignalBatches(Sampler):
    """Batches of row indices for ``rank`` of ``world_size`` (see the module docstring); ``set_epoch`` reshuffles."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, pad: bool = True):
        if n < 1 or batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need n >= 1, batch_size >= 1 and 0 <= rank < world_size (got {n}, {batch_size}, "
                             f"{rank}, {world_size})")
        self.n, self.batch_size, self.seed, self.shuffle = int(n), int(batch_size), int(seed), shuffle
        self.rank, self.world_size, self.pad = int(rank), int(world_size), pad
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, global_step: int) -> None:
        """Skip what a run that stopped after ``global_step`` optimizer steps (one per batch) already trained on:
        the next pass is epoch ``global_step // len(self)`` without its first ``global_step % len(self)`` batches."""
        n = len(self)
        self._resume = (int(global_step) // n, int(global_step) % n) if n else None

    def rows(self, epoch: int | None = None) -> np.ndarray:
        """This rank's rows for ``epoch`` (default: the current one), in batch order."""
        epoch = self.epoch if epoch is None else int(epoch)
        order = (np.random.default_rng([self.seed, 104729, epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        if self.pad:
            order = np.resize(order, math.ceil(self.n / self.world_size) * self.world_size)
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self._resume is not None:  # the iterator may be created before Lightning calls set_epoch
            (self.epoch, done), self._resume = self._resume, None
            skip = done * self.batch_size
        rows = self.rows()
        for start in range(skip, len(rows), self.batch_size):
            yield rows[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        per_rank = (math.ceil(self.n / self.world_size) if self.pad
                    else len(range(self.rank, self.n, self.world_size)))
        return math.ceil(per_rank / self.batch_size)
