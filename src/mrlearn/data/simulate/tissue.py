"""Tissue classes, their 3 T relaxation parameters, per-subject draws and the segmentation label table.

Every anatomy (the MNI templates or the procedural phantom) is described by per-voxel *fractions* of the tissues in
:data:`TISSUES` (air is ``1 - sum``). Parameters are relative proton density PD (pure water = 1), T1 and T2 in ms,
population means with the between-subject standard deviations (SD) each subject's values are drawn with:

=========  ===========  ============  ==========  ===========================================================
tissue     PD (SD)      T1 ms (SD)    T2 ms (SD)  source (3 T)
=========  ===========  ============  ==========  ===========================================================
csf        1.00 (.02)   4163 (263)    2000 (200)  T1 mean +- SD: Lu et al., JMRI 22:13-22 (2005). T2: free-water
                                                  CSF, 1.5-2 s reported at 3 T (SD 10 %, our choice)
gm         0.80 (.03)   1820 (114)    99 (7)      Stanisz et al., MRM 54:507-512 (2005), mean +- SD
wm         0.69 (.03)   1084 (45)     69 (3)      Stanisz et al. (2005), mean +- SD
fat        0.90 (.03)   371 (8)       133 (7)     subcutaneous fat, Gold et al., AJR 183:343-351 (2004); T2 SD 5 %
muscle     0.75 (.03)   1420 (38)     32 (2)      skeletal muscle, Gold et al. (2004)
bone       0.05 (.01)   250 (25)      0.5 (.05)   cortical bone: T2 below 1 ms, invisible at clinical echo times
lesion     0.77 (.03)   1500 (150)    130 (20)    white-matter hyperintensity: T1 and T2 prolonged by about 40 %
                                                  and 90 % over white matter (bright on T2 and FLAIR, dark on T1;
                                                  Wardlaw et al., Lancet Neurol 12:822-838 (2013) for the imaging
                                                  definition); SDs wide, our choice
=========  ===========  ============  ==========  ===========================================================

PD values are the usual water-content figures (white matter ~0.69, grey matter ~0.80, muscle ~0.75), with a 3 %
SD (water content varies by a few per cent between healthy adults). A subject's value of each parameter is
``mean + SD z`` with ``z ~ N(0, 1)`` truncated to ``[-2, 2]`` (:func:`draw_tissues`), which spans the 5-10 %
between-subject variation reported for healthy adults (5-10 %). ``FAT_INDEX`` marks the fat compartment that fat-suppressed
contrasts attenuate.

Segmentation labels (:data:`SEGMENTATION_LABELS`, stored in every simulated file): 0 background (tissue fractions
sum below 0.5), then ``1 + index`` of the tissue with the largest fraction: 1 csf, 2 gm, 3 wm, 4 fat, 5 muscle,
6 bone, 7 lesion.
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

    def as_dict(self) -> dict[str, float]:
        return {"pd": self.pd, "t1_ms": self.t1_ms, "t2_ms": self.t2_ms}


TISSUES: tuple[Tissue, ...] = (
    Tissue("csf", 1.00, 4163.0, 2000.0),
    Tissue("gm", 0.80, 1820.0, 99.0),
    Tissue("wm", 0.69, 1084.0, 69.0),
    Tissue("fat", 0.90, 371.0, 133.0),
    Tissue("muscle", 0.75, 1420.0, 32.0),
    Tissue("bone", 0.05, 250.0, 0.5),
    Tissue("lesion", 0.77, 1500.0, 130.0),
)
# Between-subject standard deviations (PD, T1 ms, T2 ms), in the order of TISSUES (see the table above).
TISSUE_SD: tuple[tuple[float, float, float], ...] = (
    (0.02, 263.0, 200.0),
    (0.03, 114.0, 7.0),
    (0.03, 45.0, 3.0),
    (0.03, 8.0, 7.0),
    (0.03, 38.0, 2.0),
    (0.01, 25.0, 0.05),
    (0.03, 150.0, 20.0),
)
TRUNCATE_SD = 2.0
TISSUE_NAMES: tuple[str, ...] = tuple(t.name for t in TISSUES)
TISSUE_INDEX: dict[str, int] = {name: i for i, name in enumerate(TISSUE_NAMES)}
FAT_INDEX = TISSUE_INDEX["fat"]
SEGMENTATION_LABELS: dict[int, str] = {0: "background", **{i + 1: name for i, name in enumerate(TISSUE_NAMES)}}


def draw_tissues(rng: np.random.Generator) -> tuple[Tissue, ...]:
    """One subject's tissue parameters: each ``mean + SD z``, ``z ~ N(0, 1)`` truncated to +-TRUNCATE_SD."""
    out = []
    for tissue, sd in zip(TISSUES, TISSUE_SD):
        z = np.clip(rng.standard_normal(3), -TRUNCATE_SD, TRUNCATE_SD)
        pd, t1, t2 = (m + s * float(v) for m, s, v in zip((tissue.pd, tissue.t1_ms, tissue.t2_ms), sd, z))
        out.append(Tissue(tissue.name, round(pd, 4), round(t1, 2), round(t2, 3)))
    return tuple(out)


def segmentation_from_fractions(fractions: np.ndarray) -> np.ndarray:
    """Label map (uint8 ``[...]``, :data:`SEGMENTATION_LABELS`) from tissue fractions ``[T, ...]``: background where
    the fractions sum below 0.5, else ``1 +`` the index of the largest fraction."""
    f = np.asarray(fractions)
    labels = (np.argmax(f, axis=0) + 1).astype(np.uint8)
    labels[f.sum(axis=0) < 0.5] = 0
    return labels


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
