"""Tissue classes and their 3 T relaxation parameters.

Every anatomy (the MNI templates or the procedural phantom) is described by per-voxel *fractions* of the tissues in
:data:`TISSUES` (air is ``1 - sum``). Parameters are relative proton density PD (pure water = 1), T1 and T2 in ms:

=========  =====  =======  ======  ==========================================================================
tissue     PD     T1 (ms)  T2 (ms) source (3 T)
=========  =====  =======  ======  ==========================================================================
csf        1.00   4163     2000    T1: Lu et al., JMRI 22:13-22 (2005). T2: free-water CSF, 1.5-2 s reported at 3 T
gm         0.80   1820     99      Stanisz et al., MRM 54:507-512 (2005); T2 close to Wansapura et al., JMRI 9:531 (1999)
wm         0.69   1084     69      Stanisz et al. (2005); T2 close to Wansapura et al. (1999)
fat        0.90   371      133     subcutaneous fat, Gold et al., AJR 183:343-351 (2004)
muscle     0.75   1420     32      skeletal muscle, Gold et al. (2004)
bone       0.05   250      0.5     cortical bone: T2 below 1 ms, invisible at clinical echo times
=========  =====  =======  ======  ==========================================================================

PD values are the usual water-content figures (white matter ~0.69, grey matter ~0.80, muscle ~0.75). Values are
population means; no inter-subject variation is modelled. ``FAT_INDEX`` marks the fat compartment that
fat-suppressed contrasts attenuate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tissue:
    """Relaxation parameters of one tissue at 3 T (PD relative to water, T1/T2 in milliseconds)."""

    name: str
    pd: float
    t1_ms: float
    t2_ms: float


TISSUES: tuple[Tissue, ...] = (
    Tissue("csf", 1.00, 4163.0, 2000.0),
    Tissue("gm", 0.80, 1820.0, 99.0),
    Tissue("wm", 0.69, 1084.0, 69.0),
    Tissue("fat", 0.90, 371.0, 133.0),
    Tissue("muscle", 0.75, 1420.0, 32.0),
    Tissue("bone", 0.05, 250.0, 0.5),
)
TISSUE_NAMES: tuple[str, ...] = tuple(t.name for t in TISSUES)
TISSUE_INDEX: dict[str, int] = {name: i for i, name in enumerate(TISSUE_NAMES)}
FAT_INDEX = TISSUE_INDEX["fat"]


def parameter_maps(fractions: np.ndarray) -> dict[str, np.ndarray]:
    """Fraction-weighted PD, T1, T2 maps from tissue fractions ``[T, ...]`` (T = len(TISSUES)).

    ``pd = sum_t f_t PD_t``; ``t1`` and ``t2`` are the PD-and-fraction-weighted means over the tissues present
    (0 where there is no tissue). For contrasts the simulator uses the per-compartment signal sum instead (see
    :mod:`mrlearn.data.simulate.contrasts`), which is the exact partial-volume model.
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape[0] != len(TISSUES):
        raise ValueError(f"fractions must have {len(TISSUES)} tissue channels, got {f.shape[0]}")
    pd_t = np.array([t.pd for t in TISSUES]).reshape((-1,) + (1,) * (f.ndim - 1))
    w = f * pd_t
    pd = w.sum(axis=0)
    safe = np.where(pd > 0, pd, 1.0)
    t1 = sum(w[i] * t.t1_ms for i, t in enumerate(TISSUES)) / safe
    t2 = sum(w[i] * t.t2_ms for i, t in enumerate(TISSUES)) / safe
    zero = pd <= 0
    return {
        "pd": pd.astype(np.float32),
        "t1_ms": np.where(zero, 0.0, t1).astype(np.float32),
        "t2_ms": np.where(zero, 0.0, t2).astype(np.float32),
    }
