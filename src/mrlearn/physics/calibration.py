"""Calibration (ACS) region of undersampled k-space: the largest fully sampled box around the centre.

Conventions: centred k-space (DC at ``(H // 2, W // 2)``); a sampling pattern is a bool ``[H, W]`` array (True =
acquired). Real undersampled data carry zeros where nothing was acquired, so the pattern is where any coil is
non-zero (:func:`sampling_pattern`); a given mask is combined with it.

The calibration box is the axis-aligned rectangle of the largest area that contains the centre sample and is
fully sampled, of any shape (16 x 16 and 20 x 20 Poisson boxes, 24 x 5, a full-height band of centre columns
for 1-D masks), optionally capped per axis (``max_size``: a larger box is cut to the cap, centred). The ESPIRiT
kernel is shrunk per axis to fit a small box (:func:`fit_kernel`); only a box smaller than
:data:`MIN_BOX` on a side cannot calibrate (:func:`require_box` raises a one-line error).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from mrlearn.errors import input_error

#: the smallest calibration box side ESPIRiT can use (a 2 x 2 kernel at two positions per axis)
MIN_BOX = 3


def sampling_pattern(kspace: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """Bool ``[H, W]``: sampled in every slice of the batch (non-zero in any coil, and inside ``mask``).

    ``kspace`` ``[C, H, W]`` or ``[B, C, H, W]``; ``mask`` broadcastable to it (``[W]``, ``[B, 1, 1, W]``,
    ``[H, W]``, ...) or None.
    """
    k = kspace if kspace.ndim == 4 else kspace.unsqueeze(0)
    nonzero = (k != 0).any(dim=1)  # [B, H, W]
    if mask is not None:
        m = torch.as_tensor(mask, device=k.device)
        nonzero = nonzero & torch.broadcast_to(m != 0, k.shape).any(dim=1)
    return nonzero.all(dim=0).cpu().numpy()


def _centre_runs(pattern: np.ndarray, axis_len: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: first and last column of the sampled run through column ``c`` (``lo > hi`` when ``c`` is empty)."""
    left = np.cumprod(pattern[:, c::-1], axis=1).sum(axis=1)
    right = np.cumprod(pattern[:, c:], axis=1).sum(axis=1)
    return c - left + 1, c + right - 1


def _cap_interval(lo: int, hi: int, centre: int, cap: int) -> tuple[int, int]:
    """A sub-interval of ``[lo, hi]`` of length ``min(cap, hi - lo + 1)``, as centred on ``centre`` as it allows."""
    n = hi - lo + 1
    if n <= cap:
        return lo, hi
    start = min(max(lo, centre - cap // 2), hi - cap + 1)
    return start, start + cap - 1


def calibration_box(pattern: np.ndarray, max_size: int | Sequence[int] | None = None) -> tuple[slice, slice]:
    """``(rows, cols)`` of the largest fully sampled box containing the centre of ``pattern [H, W]``.

    ``max_size``: cap per axis (an int for both, ``(h, w)``, or None for none); the box maximises the capped
    area; ties go to the squarer box, then to the longer row range,
    which the cap then cuts centred. Empty slices when the centre is not sampled.

    >>> p = np.zeros((32, 32), bool); p[10:26, 12:20] = True
    >>> calibration_box(p)
    (slice(10, 26, None), slice(12, 20, None))
    >>> calibration_box(p, max_size=6)
    (slice(13, 19, None), slice(13, 19, None))
    """
    p = np.asarray(pattern, dtype=bool)
    h, w = p.shape
    cr, cc = h // 2, w // 2
    if max_size is None:
        cap_h, cap_w = h, w
    elif isinstance(max_size, (int, np.integer)):
        cap_h = cap_w = int(max_size)
    else:
        cap_h, cap_w = int(max_size[0]), int(max_size[1])
    if not p[cr, cc] or cap_h < 1 or cap_w < 1:
        return slice(cr, cr), slice(cc, cc)
    lo, hi = _centre_runs(p, w, cc)
    valid = p[:, cc]
    # the contiguous run of rows through the centre whose centre column is sampled
    top = cr - int(np.cumprod(valid[cr::-1]).sum()) + 1
    bottom = cr + int(np.cumprod(valid[cr:]).sum()) - 1
    up = np.arange(cr, top - 1, -1)  # candidate first rows, from the centre upwards
    down = np.arange(cr, bottom + 1)  # candidate last rows
    up_lo, up_hi = np.maximum.accumulate(lo[up]), np.minimum.accumulate(hi[up])
    dn_lo, dn_hi = np.maximum.accumulate(lo[down]), np.minimum.accumulate(hi[down])
    width = np.minimum(up_hi[:, None], dn_hi[None, :]) - np.maximum(up_lo[:, None], dn_lo[None, :]) + 1
    height = (np.arange(len(up))[:, None] + np.arange(len(down))[None, :] + 1)
    eff_w = np.minimum(width, cap_w)
    eff_h = np.minimum(height, cap_h)
    area = eff_h * eff_w
    # lexicographic: capped area, then the squarer box, then the longest row range (the cap then centres it)
    mid = 2 * (h + w)
    score = area * mid * (h + w + 1) + np.minimum(eff_h, eff_w) * mid + height
    i, j = np.unravel_index(int(np.argmax(score)), score.shape)
    r0, r1 = int(up[i]), int(down[j])
    c0, c1 = max(up_lo[i], dn_lo[j]), min(up_hi[i], dn_hi[j])
    r0, r1 = _cap_interval(r0, r1, cr, cap_h)
    c0, c1 = _cap_interval(int(c0), int(c1), cc, cap_w)
    return slice(r0, r1 + 1), slice(c0, c1 + 1)


def box_shape(box: tuple[slice, slice]) -> tuple[int, int]:
    """``(rows, columns)`` of a box from :func:`calibration_box`."""
    return box[0].stop - box[0].start, box[1].stop - box[1].start


def fit_kernel(kernel_size: int | Sequence[int], box: tuple[int, int]) -> tuple[int, int]:
    """ESPIRiT kernel ``(kh, kw)`` for a calibration box ``(bh, bw)``: the requested size, shrunk per axis to at most
    ``b // 2 + 1`` so that at least about half the box's positions remain (6 stays 6 for a 16-wide box; 3 for 5)."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, (int, np.integer)) else kernel_size
    return max(1, min(int(kh), box[0] // 2 + 1)), max(1, min(int(kw), box[1] // 2 + 1))


def require_box(box: tuple[slice, slice], where: str = "kspace") -> tuple[int, int]:
    """The box's shape, or a one-line error when it is too small to calibrate coil sensitivities."""
    bh, bw = box_shape(box)
    if min(bh, bw) < MIN_BOX:
        raise input_error(where, f"only a {bh} x {bw} fully sampled centre box (calibration region) was found; "
                          f"coil sensitivities need at least {MIN_BOX} x {MIN_BOX}",
                          "acquire or simulate a fully sampled centre (e.g. center fraction 0.08, or a Poisson "
                          "calibration box), or pass sens_maps")
    return bh, bw
