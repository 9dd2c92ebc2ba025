"""Undersampling masks: fastMRI's column masks (drop-in) and 2-D variable-density Poisson-disc masks.

Every mask is a registered class (registry kind ``mask``) called as fastMRI's::

    mask_func = RandomMaskFunc([0.08], [4])                   # (center_fractions, accelerations, ...)
    mask, num_low_frequencies = mask_func(shape, offset=None, seed=tuple(map(ord, fname)))

Config ``name`` -> class: ``random`` -> :class:`RandomMaskFunc` (fastMRI's random columns), ``equispaced`` ->
:class:`EquiSpacedMaskFunc` (fastMRI's equispaced columns, integer R), ``equispaced_fraction`` ->
:class:`EquispacedMaskFractionFunc` (fastMRI's equispaced columns at the adjusted R), ``poisson`` ->
:class:`PoissonDiscMaskFunc` (2-D variable-density Poisson disc with a calibration box; mrlearn's addition).

Shapes, layout and seeding: :mod:`mrlearn.physics.masks.base` (fastMRI's ``(..., H, W, 2)`` or mrlearn's
``(..., H, W)``; numpy's legacy ``RandomState`` seeded as fastMRI's, so the same seed gives fastMRI's mask).
Validation/test masks are fixed per volume with ``seed=file_seed(fname)``.
"""

from mrlearn.physics.masks.base import (
    MaskFunc,
    MaskGeometry,
    achieved_acceleration,
    calibration_slices,
    center_columns,
    file_seed,
    seed_from_name,
)
from mrlearn.physics.masks.columns import (
    ColumnMaskFunc,
    EquispacedMaskFractionFunc,
    EquiSpacedMaskFunc,
    RandomMaskFunc,
)
from mrlearn.physics.masks.poisson import PoissonDiscMaskFunc, poisson_disc

__all__ = [
    "ColumnMaskFunc", "EquiSpacedMaskFunc", "EquispacedMaskFractionFunc", "MaskFunc", "MaskGeometry",
    "PoissonDiscMaskFunc", "RandomMaskFunc", "achieved_acceleration", "calibration_slices", "center_columns",
    "file_seed", "poisson_disc", "seed_from_name",
]
