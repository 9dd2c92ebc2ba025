"""The mask-function protocol shared by every mask: shapes, seeding, the drawn pair, output layout.

A mask function is called as fastMRI's: ``mask, num_low_frequencies = mask_func(shape, offset=None, seed=None)``.
It never changes its own attributes; its only state is the random generator used when ``seed`` is None.

Shapes (the two forms a call accepts):
- fastMRI form ``(..., H, W, 2)`` (real/imaginary last, at least 3 axes, last axis of size 2): the mask has the
  same number of axes, all 1 except ``W`` at ``-2`` (and ``H`` at ``-3`` for 2-D masks), as fastMRI's.
- mrlearn form ``(..., H, W)`` (complex k-space, e.g. ``(H, W)`` or ``[C, H, W]``): all axes 1 except ``W`` at
  ``-1`` (and ``H`` at ``-2`` for 2-D masks), so ``(1, W)`` or ``(H, W)`` for ``(H, W)``.
A shape is read as fastMRI's exactly when it has at least 3 axes and its last axis has size 2.
The mask is a float32 ``torch.Tensor`` of 0/1; k-space is masked as ``kspace * mask + 0.0`` (no negative zeros).

Seeding (fastMRI's, so that the same seed gives the same mask as fastMRI's code): the generator is numpy's legacy
``RandomState`` (MT19937). With ``seed`` (an int or a tuple of ints in ``[0, 2**32)``) the call draws from
``RandomState(seed)`` and leaves the object's generator untouched; with ``seed=None`` it draws from the object's
generator ``RandomState(self.seed)`` (created at construction), which advances, as fastMRI's does.
Validation/test masks are fixed per volume with ``seed=file_seed(fname) = tuple(map(ord, fname))`` (fastMRI's
rule, the file's base name); training masks are seeded per sample by the caller, e.g. ``(seed, epoch, index)``.

The k-space centre (DC) is at ``(H // 2, W // 2)`` (centered FFT, ``physics.fft``).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mrlearn.errors import input_error

Seed = int | Sequence[int] | None


class MaskGeometry:
    """The parsed k-space shape of one call: ``h``, ``w``, the number of axes and the form (fastMRI or mrlearn)."""

    def __init__(self, shape: Sequence[int]):
        try:
            dims = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise input_error("mask shape", f"{shape!r} is not a shape",
                              "pass the k-space shape, e.g. (640, 368)") from None
        self.fastmri = len(dims) >= 3 and dims[-1] == 2
        spatial = dims[-3:-1] if self.fastmri else dims[-2:]
        if len(spatial) < 2 or min(spatial) < 1:
            raise input_error("mask shape", f"expected (..., H, W) or fastMRI's (..., H, W, 2), got {dims}",
                              "pass the k-space shape (positive H and W)")
        self.ndim = len(dims)
        self.h, self.w = spatial

    def columns(self, cols: np.ndarray) -> torch.Tensor:
        """Column mask ``(W,)`` -> float32 tensor of the call's layout (``W`` on the column axis, other axes 1)."""
        out = [1] * self.ndim
        out[-2 if self.fastmri else -1] = self.w
        return torch.from_numpy(np.asarray(cols, dtype=np.float32).reshape(out))

    def plane(self, mask: np.ndarray) -> torch.Tensor:
        """2-D mask ``(H, W)`` -> float32 tensor of the call's layout (``H, W`` on the spatial axes, other axes 1)."""
        out = [1] * self.ndim
        if self.fastmri:
            out[-3], out[-2] = self.h, self.w
        else:
            out[-2], out[-1] = self.h, self.w
        return torch.from_numpy(np.asarray(mask, dtype=np.float32).reshape(out))


def random_state(seed: Seed, where: str = "mask seed") -> np.random.RandomState:
    """numpy's legacy ``RandomState(seed)`` (fastMRI's generator); a bad seed is a one-line error."""
    if seed is not None and not isinstance(seed, (int, np.integer)):
        seed = tuple(int(s) for s in seed)
    try:
        return np.random.RandomState(seed)
    except (TypeError, ValueError):
        raise input_error(where, f"{seed!r} is not a valid seed",
                          "use an int or a tuple of ints in [0, 2**32), e.g. tuple(map(ord, fname))") from None


def file_seed(fname: str | Path) -> tuple[int, ...]:
    """fastMRI's per-volume mask seed: ``tuple(map(ord, name))`` of the file's base name (same in every folder)."""
    name = Path(str(fname)).name
    if not name:
        raise input_error("mask seed", f"file name {str(fname)!r} is empty", "pass the volume's file name")
    return tuple(map(ord, name))


def seed_from_name(fname: str | Path, extra: int = 0) -> int:
    """One integer in ``[0, 2**63)`` from a file's base name (SHA-256), for seed lists of numpy Generators.

    Used where a name must enter a list of integer seeds (SSDU splits); masks use :func:`file_seed` instead.
    """
    name = Path(str(fname)).name
    digest = hashlib.sha256(f"{name}\x00{int(extra)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def number_list(values: Any, name: str) -> list[float]:
    """``values`` (a number or a sequence of numbers) as a list of floats; other input is a one-line error."""
    if isinstance(values, (int, float, np.number)) and not isinstance(values, bool):
        values = [values]
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise input_error(f"mask {name}", f"{values!r} is not a list of numbers", "give e.g. [4, 8]") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise input_error(f"mask {name}", f"{values!r} is empty or not finite", "give at least one number, e.g. [4]")
    return out


def check_accelerations(accelerations: Any) -> list[float]:
    accs = number_list(accelerations, "accelerations")
    if any(r < 1 for r in accs):
        raise input_error("mask accelerations", f"{accs} contains a value below 1",
                          "accelerations are undersampling factors >= 1, e.g. [4, 8] "
                          "(the order is (center_fractions, accelerations), as fastMRI's)")
    return accs


class MaskFunc:
    """Base of every mask function (see the module docstring for the call, shapes and seeding).

    Subclasses implement :meth:`sample` ``(geometry, offset, rng) -> (mask tensor, num_low_frequencies)`` drawing
    only from ``rng``; :meth:`__call__` chooses the generator and is otherwise a pure function.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self.rng = random_state(seed)

    def __call__(self, shape: Sequence[int], offset: int | None = None, seed: Seed = None) -> tuple[torch.Tensor, Any]:
        geometry = MaskGeometry(shape)
        if offset is not None and (not isinstance(offset, (int, np.integer)) or offset < 0):
            raise input_error("mask offset", f"{offset!r} is not a non-negative integer", "pass e.g. offset=0 or None")
        rng = self.rng if seed is None else random_state(seed)
        return self.sample(geometry, offset, rng)

    def sample(self, geometry: MaskGeometry, offset: int | None,
               rng: np.random.RandomState) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError


def center_columns(width: int, n_low: int) -> np.ndarray:
    """Boolean ``(W,)``: the ``n_low`` centre columns, starting at ``(W - n_low + 1) // 2`` (fastMRI)."""
    cols = np.zeros(width, dtype=bool)
    start = (width - n_low + 1) // 2
    cols[start:start + n_low] = True
    return cols


def calibration_slices(shape: Sequence[int], acs: int | tuple[int, int]) -> tuple[slice, slice]:
    """Row/column slices of the fully sampled centre region of a mask for k-space ``shape`` (its last two axes).

    ``acs`` is an int (the centre columns of a column mask, all rows; as :func:`center_columns`) or a box
    ``(h, w)`` holding the DC index ``n // 2`` on both axes (Poisson calibration box).
    """
    h, w = int(shape[-2]), int(shape[-1])
    if isinstance(acs, (int, np.integer)):
        start = (w - int(acs) + 1) // 2
        return slice(0, h), slice(start, start + int(acs))
    ch, cw = int(acs[0]), int(acs[1])
    top, left = h // 2 - ch // 2, w // 2 - cw // 2
    return slice(top, top + ch), slice(left, left + cw)


def achieved_acceleration(mask: Any, shape: Sequence[int], padding: tuple[int, int] | None = None) -> float:
    """Acquired/sampled ratio of ``mask`` (any layout above, broadcast to the ``(H, W)`` of ``shape``).

    ``shape`` is the k-space shape ``(..., H, W)`` (its last two axes are used). With ``padding`` ``(left,
    right)`` only the acquired columns ``left:right`` count. ``inf`` for an empty mask.
    """
    h, w = int(shape[-2]), int(shape[-1])
    m = np.asarray(mask, dtype=np.float32)
    m = np.squeeze(m)
    if m.ndim == 1:
        m = m[None, :]
    try:
        m = np.broadcast_to(m, (h, w))
    except ValueError:
        raise input_error("mask", f"shape {np.shape(mask)} does not fit k-space {(h, w)}",
                          "use a column mask of width W or an (H, W) mask") from None
    if padding is not None:
        m = m[:, int(padding[0]):int(padding[1])]
    n = float(np.count_nonzero(m))
    return m.size / n if n else math.inf
