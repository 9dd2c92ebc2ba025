"""From a 4-D diffusion series to the voxels a fit can use: b-value units, default mask, bad voxels.

Conventions: ``data`` is ``[X, Y, Z, N]`` in the file's scaled units (slope and intercept applied), b-values in
s/mm^2. The default mask (no ``--mask``) is Otsu's threshold on the lowest-b image (mean over the volumes at the
lowest b-value, median-filtered 3 x 3 x 3 as dipy's ``median_otsu`` does): it separates tissue from a background
that may be negative after int16 scaling. Voxels of the mask that a fit cannot use are *bad* and coded in the
excluded-voxel map: 1 = a NaN or infinite value, 2 = a negative value, 3 = no positive signal at the lowest b.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrlearn.errors import input_error

BAD_CODES = {1: "NaN/inf", 2: "negative", 3: "no signal at lowest b"}


def check_bvalue_units(b: torch.Tensor | np.ndarray, where: str) -> None:
    """Refuse b-values that are evidently not in s/mm^2 (s/m^2 are 1e6 times larger; ms/um^2 1000 times smaller)."""
    bmax = float(np.max(np.asarray(b, dtype=np.float64)))
    if bmax > 1e5:
        raise input_error(where, f"b-values look like s/m^2 (largest {bmax:.4g}); mrlearn expects s/mm^2",
                          "divide them by 1e6 (e.g. 8e8 s/m^2 = 800 s/mm^2)")
    if 0 < bmax <= 10:
        raise input_error(where, f"b-values look like ms/um^2 (largest {bmax:.4g}); mrlearn expects s/mm^2",
                          "multiply them by 1000 (e.g. 0.8 ms/um^2 = 800 s/mm^2)")
    if int(np.unique(np.asarray(b)).size) < 4:
        raise input_error(where, "IVIM needs at least 4 distinct b-values", "acquire or list more b-values")


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the cut maximising the between-class variance of a histogram (the middle of
    the maximising cuts when several, e.g. an empty gap between two far-apart modes)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = (w0 * w1 * (m0 - m1) ** 2)[:-1]
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))  # a plateau when the modes are far apart
    return float(0.5 * (edges[1:][best[0]] + edges[1:][best[-1]]))


def lowest_b_image(data: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean over the volumes acquired at the lowest b-value ``[X, Y, Z]`` (NaN where any of them is not finite)."""
    return data[..., b == b.min()].mean(-1)


def default_mask(data: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Otsu mask of the median-filtered lowest-b image; returns (mask, what was chosen)."""
    from scipy.ndimage import median_filter

    img = lowest_b_image(data, b)
    finite = np.isfinite(img)
    if not finite.any():
        raise input_error("--dwi", "no finite voxel in the lowest-b image", "check the image")
    filled = np.where(finite, img, np.nanmin(np.where(finite, img, np.inf)))
    smooth = median_filter(filled, size=3, mode="nearest")
    thr = otsu_threshold(smooth[finite])
    mask = (smooth > thr) & finite
    info = {"kind": "otsu", "threshold": thr, "b": float(b.min()), "voxels": int(mask.sum())}
    return mask, info


@dataclass
class VoxelSet:
    """The voxels to fit: ``signals [V, N]`` at ``mask_fit`` (mask minus bad voxels), the excluded-voxel code map
    ``[X, Y, Z]`` (uint8, codes in :data:`BAD_CODES`), counts per code, and how the mask was chosen."""

    signals: np.ndarray
    mask_fit: np.ndarray
    excluded: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)
    mask_info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        n_mask = int(self.mask_fit.sum()) + sum(self.counts.values())
        bad = sum(self.counts.values())
        if not bad:
            return f"bad voxels: none of {n_mask} in the mask"
        detail = ", ".join(f"{n} {k}" for k, n in self.counts.items() if n)
        return f"bad voxels: {bad} of {n_mask} in the mask skipped ({detail}); map in excluded.nii.gz"


def bad_voxel_codes(signals: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per voxel of ``signals [V, N]`` (uint8 ``[V]``): 0 fit-able, else the code of :data:`BAD_CODES` (1 NaN/inf,
    2 a negative value, 3 no positive signal at the lowest b-value; the first that applies in that order)."""
    vox = np.asarray(signals, dtype=np.float64)
    low = np.asarray(b) == np.min(b)
    code = np.zeros(vox.shape[0], dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        code[(vox[:, low].mean(-1) <= 0)] = 3
        code[(vox < 0).any(-1)] = 2
    code[~np.isfinite(vox).all(-1)] = 1
    return code


def select_voxels(data: np.ndarray, b: np.ndarray, mask: np.ndarray | None, bad_voxels: str = "skip",
                  where: str | Path = "--dwi") -> VoxelSet:
    """Apply ``mask`` (None: :func:`default_mask`) and sort out bad voxels (``skip`` them or ``error``)."""
    if bad_voxels not in ("skip", "error"):
        raise input_error("--bad-voxels", f"unknown choice {bad_voxels!r}", "use skip or error")
    info: dict[str, Any] = {"kind": "file"}
    if mask is None:
        mask, info = default_mask(data, b)
        if not mask.any():
            raise input_error(where, "the default (Otsu) mask is empty", "give --mask")
    vox = data[mask]
    code = bad_voxel_codes(vox, b)
    counts = {BAD_CODES[c]: int((code == c).sum()) for c in BAD_CODES}
    if code.any() and bad_voxels == "error":
        first = next(k for k, n in counts.items() if n)
        raise input_error(where, f"{int((code > 0).sum())} voxel(s) in the mask cannot be fitted ({first} first)",
                          "use --bad-voxels skip (the default), clean the image or tighten the mask")
    excluded = np.zeros(mask.shape, dtype=np.uint8)
    excluded[mask] = code
    keep = mask.copy()
    keep[mask] = code == 0
    if not keep.any():
        raise input_error(where, "every voxel of the mask is bad (NaN, negative or zero signal)", "check the image and mask")
    return VoxelSet(vox[code == 0], keep, excluded, counts, info)
