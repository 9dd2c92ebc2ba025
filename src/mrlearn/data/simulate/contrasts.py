"""Contrasts of the embedded dataset: signal equations, TR/TE/TI and ``acquisition`` names.

Signals are magnitudes per tissue compartment; a voxel's signal is the partial-volume sum
``s = sum_t f_t S_t`` over the tissue fractions ``f_t`` (exact for non-exchanging compartments).

Spin echo (SE), with TE << TR (the refocusing pulse's effect on Mz and echo-train effects are neglected)::

    S = PD * (1 - exp(-TR / T1)) * exp(-TE / T2)

Inversion recovery spin echo (IR, magnitude reconstruction)::

    S = PD * |1 - 2 exp(-TI / T1) + exp(-TR / T1)| * exp(-TE / T2)

Fat suppression (spectral fat saturation) scales the fat compartment by ``fat_residual`` (0.05: 5 % of the fat
signal survives).

================  =====  ==========================  ==================================================
acquisition       seq.   TR / TE / TI (ms)           notes
================  =====  ==========================  ==================================================
``PD``            SE     3000 / 20 / -               proton-density weighted (knee analogue ``CORPD_FBK``)
``PDFS``          SE     3000 / 20 / -, fat sat      PD fat-suppressed (knee analogue ``CORPDFS_FBK``)
``T2``            SE     4000 / 100 / -              T2 weighted: CSF bright, fat bright-ish
``T1``            SE     500 / 10 / -                T1 weighted: WM > GM > CSF, fat bright
``FLAIR``         IR     9000 / 120 / 2432           TI nulls CSF at the nominal TR: TI = T1_csf ln(2 / (1 + exp(-TR/T1_csf)))
================  =====  ==========================  ==================================================

Per volume, TR and TE are jittered by a small uniform relative amount (see :func:`jittered`); TI stays at its
nominal value, so CSF in FLAIR is nulled only approximately, as on a scanner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from mrlearn.data.simulate.tissue import FAT_INDEX, TISSUE_INDEX, TISSUES, Tissue


@dataclass(frozen=True)
class Protocol:
    """Sequence parameters of one contrast (times in ms)."""

    acquisition: str
    sequence: str  # "SE" or "IR"
    tr_ms: float
    te_ms: float
    ti_ms: float | None = None
    fat_residual: float = 1.0  # multiplier of the fat signal (1 = no suppression)


def _csf_null_ti(tr_ms: float) -> float:
    t1 = TISSUES[TISSUE_INDEX["csf"]].t1_ms
    return t1 * math.log(2.0 / (1.0 + math.exp(-tr_ms / t1)))


PROTOCOLS: dict[str, Protocol] = {
    "PD": Protocol("PD", "SE", 3000.0, 20.0),
    "PDFS": Protocol("PDFS", "SE", 3000.0, 20.0, fat_residual=0.05),
    "T2": Protocol("T2", "SE", 4000.0, 100.0),
    "T1": Protocol("T1", "SE", 500.0, 10.0),
    "FLAIR": Protocol("FLAIR", "IR", 9000.0, 120.0, ti_ms=round(_csf_null_ti(9000.0), 1)),
}
CONTRASTS: tuple[str, ...] = tuple(PROTOCOLS)


def jittered(protocol: Protocol, rng: np.random.Generator, rel: float = 0.05) -> Protocol:
    """A copy with TR and TE each scaled by ``1 + u``, ``u ~ U(-rel, rel)`` (TI unchanged)."""
    u_tr, u_te = rng.uniform(-rel, rel, size=2)
    return replace(protocol, tr_ms=round(protocol.tr_ms * (1 + u_tr), 1), te_ms=round(protocol.te_ms * (1 + u_te), 2))


def tissue_signals(protocol: Protocol, tissues: Sequence[Tissue] = TISSUES) -> np.ndarray:
    """Signal of each tissue (float64 ``[T]``) for this protocol, by the equations above; ``tissues`` in the order of
    :data:`TISSUES` (default the population means; a subject's own from :func:`tissue.draw_tissues`)."""
    pd = np.array([t.pd for t in tissues])
    t1 = np.array([t.t1_ms for t in tissues])
    t2 = np.array([t.t2_ms for t in tissues])
    e2 = np.exp(-protocol.te_ms / t2)
    if protocol.sequence == "SE":
        s = pd * (1.0 - np.exp(-protocol.tr_ms / t1)) * e2
    elif protocol.sequence == "IR":
        if protocol.ti_ms is None:
            raise ValueError(f"IR protocol {protocol.acquisition} needs ti_ms")
        s = pd * np.abs(1.0 - 2.0 * np.exp(-protocol.ti_ms / t1) + np.exp(-protocol.tr_ms / t1)) * e2
    else:
        raise ValueError(f"unknown sequence {protocol.sequence!r}")
    s[FAT_INDEX] *= protocol.fat_residual
    return s


def contrast_image(fractions: np.ndarray, protocol: Protocol) -> np.ndarray:
    """Magnitude image ``[...]`` (float32) from tissue fractions ``[T, ...]``: ``sum_t f_t S_t``."""
    s = tissue_signals(protocol).astype(np.float32)
    return np.tensordot(s, np.asarray(fractions, dtype=np.float32), axes=(0, 0))
