"""fastMRI's 1-D Cartesian column masks, drop-in: same names, constructor, call and masks for the same seed.

``RandomMaskFunc(center_fractions, accelerations, allow_any_combination=False, seed=None)`` (and the two
equispaced classes) called as ``mask_func(shape, offset=None, seed=None) -> (mask, num_low_frequencies)``; the
shapes and seeding are those of :mod:`mrlearn.physics.masks.base`. One draw, in fastMRI's order:

1. the pair: ``rng.randint(len(center_fractions))`` picks ``(center_fractions[i], accelerations[i])``; with
   ``allow_any_combination`` the two are drawn independently, ``rng.choice(center_fractions)`` then
   ``rng.choice(accelerations)``;
2. the centre: ``n_low = round(W * center_fraction)`` columns from ``(W - n_low + 1) // 2``;
3. the other columns (below), combined with the centre by a maximum.

- ``random`` (:class:`RandomMaskFunc`): every column is kept where ``rng.uniform(size=W) < p``,
  ``p = (W / R - n_low) / (W - n_low)``; R holds in expectation only.
- ``equispaced`` (:class:`EquiSpacedMaskFunc`): columns ``offset::R`` (R an integer), ``offset`` drawn with
  ``rng.randint(0, round(R))`` unless given; with the centre the total undershoots R.
- ``equispaced_fraction`` (:class:`EquispacedMaskFractionFunc`): spacing ``a = R (n_low - W) / (n_low R - W)``
  (the acceleration that leaves ``W / R`` columns in total once the centre is counted); columns
  ``around(arange(offset, W - 1, a))`` with an integer ``offset`` drawn with ``rng.randint(0, round(a))`` unless
  given. As fastMRI's, the arange stops before ``W - 1`` and lines may fall inside the centre.

A centre wider than the ``W / R`` columns an acceleration allows is an error (fastMRI would return the centre
alone, at a lower acceleration than asked). ``num_low_frequencies`` is ``n_low``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from mrlearn.errors import input_error
from mrlearn.physics.masks.base import MaskFunc, MaskGeometry, center_columns, check_accelerations, number_list
from mrlearn.registry import register


class ColumnMaskFunc(MaskFunc):
    """Shared part of the fastMRI column masks: the pair, the centre block, the combination (module docstring)."""

    def __init__(self, center_fractions: Sequence[float], accelerations: Sequence[float],
                 allow_any_combination: bool = False, seed: int | None = None):
        cfs = number_list(center_fractions, "center_fractions")
        accs = check_accelerations(accelerations)
        if len(cfs) != len(accs) and not allow_any_combination:
            raise input_error("mask center_fractions", f"{len(cfs)} centre fractions for {len(accs)} accelerations",
                              "give one per acceleration, e.g. center_fractions [0.08, 0.04] for accelerations "
                              "[4, 8], or set allow_any_combination")
        if any(not 0 <= cf <= 1 for cf in cfs):
            raise input_error("mask center_fractions", f"{cfs} has a value outside [0, 1]",
                              "centre fractions are fractions of the width, e.g. 0.08 "
                              "(the order is (center_fractions, accelerations), as fastMRI's)")
        super().__init__(seed)
        self.center_fractions = cfs
        self.accelerations = accs
        self.allow_any_combination = bool(allow_any_combination)

    def choose_acceleration(self, rng: np.random.RandomState) -> tuple[float, float]:
        """The ``(center_fraction, acceleration)`` pair of one draw (fastMRI's draws, in its order)."""
        if self.allow_any_combination:
            return float(rng.choice(self.center_fractions)), float(rng.choice(self.accelerations))
        i = rng.randint(len(self.center_fractions))
        return self.center_fractions[i], self.accelerations[i]

    def sample(self, geometry: MaskGeometry, offset: int | None,
               rng: np.random.RandomState) -> tuple[torch.Tensor, int]:
        width = geometry.w
        center_fraction, acceleration = self.choose_acceleration(rng)
        n_low = round(width * center_fraction)
        if n_low > width / acceleration + 1e-9:
            raise input_error("mask center_fractions",
                              f"{n_low} centre columns (fraction {center_fraction:g}) exceed the "
                              f"{width / acceleration:.1f} columns allowed by acceleration {acceleration:g} at width "
                              f"{width}", "lower the centre fraction or the acceleration")
        cols = center_columns(width, n_low) | self.other_columns(width, acceleration, offset, n_low, rng)
        if not cols.any():  # a mask that samples nothing gives all-zero images, never a result
            raise input_error("mask accelerations",
                              f"acceleration {acceleration:g} with centre fraction {center_fraction:g} samples no "
                              f"column at width {width} ({width / acceleration:.2g} expected)",
                              "use a lower acceleration or a centre fraction of at least 1 / width")
        return geometry.columns(cols), n_low

    def other_columns(self, width: int, acceleration: float, offset: int | None, n_low: int,
                      rng: np.random.RandomState) -> np.ndarray:
        """Boolean ``(W,)``: the columns outside the centre rule (they may overlap the centre)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        extra = ", allow_any_combination=True" if self.allow_any_combination else ""
        return (f"{type(self).__name__}(center_fractions={self.center_fractions}, "
                f"accelerations={self.accelerations}{extra}, seed={self.seed})")


@register("mask", "random")
class RandomMaskFunc(ColumnMaskFunc):
    """fastMRI random columns: each kept with ``p = (W / R - n_low) / (W - n_low)``, plus the centre."""

    def other_columns(self, width: int, acceleration: float, offset: int | None, n_low: int,
                      rng: np.random.RandomState) -> np.ndarray:
        prob = (width / acceleration - n_low) / (width - n_low) if width > n_low else 0.0
        return rng.uniform(size=width) < prob


@register("mask", "equispaced")
class EquiSpacedMaskFunc(ColumnMaskFunc):
    """fastMRI equispaced columns ``offset::R`` (integer R) plus the centre; the total undershoots R."""

    def other_columns(self, width: int, acceleration: float, offset: int | None, n_low: int,
                      rng: np.random.RandomState) -> np.ndarray:
        if acceleration != int(acceleration):
            raise input_error("mask accelerations",
                              f"equispaced masks need integer accelerations, got {acceleration:g}",
                              "use an integer R or the equispaced_fraction mask")
        if offset is None:
            offset = rng.randint(0, high=round(acceleration))
        cols = np.zeros(width, dtype=bool)
        cols[int(offset)::int(acceleration)] = True
        return cols


@register("mask", "equispaced_fraction")
class EquispacedMaskFractionFunc(ColumnMaskFunc):
    """fastMRI equispaced columns at the adjusted acceleration ``R (n_low - W) / (n_low R - W)`` plus the centre."""

    def other_columns(self, width: int, acceleration: float, offset: int | None, n_low: int,
                      rng: np.random.RandomState) -> np.ndarray:
        cols = np.zeros(width, dtype=bool)
        if n_low * acceleration >= width:  # the centre alone holds the W / R columns
            return cols
        adjusted = (acceleration * (n_low - width)) / (n_low * acceleration - width)
        if offset is None:
            offset = rng.randint(0, high=round(adjusted))
        samples = np.around(np.arange(offset, width - 1, adjusted)).astype(np.int64)
        cols[samples] = True
        return cols

