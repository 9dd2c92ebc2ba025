"""2-D variable-density Poisson-disc masks with a fully sampled calibration box (mrlearn's addition to fastMRI's).

``PoissonDiscMaskFunc(accelerations, calib=(16, 16), vd_power=1.0, tol=0.02, seed=None)`` is called as the column
masks (:mod:`mrlearn.physics.masks.base`: ``mask_func(shape, offset=None, seed=None)``, ``offset`` unused) and
returns ``(mask, calib)``: the ``(H, W)`` mask in the call's layout and the calibration box ``(h, w)`` (the box
holds the DC index ``n // 2`` on both axes, :func:`~mrlearn.physics.masks.base.calibration_slices`).

Sampling (:func:`poisson_disc`): dart throwing on the k-space grid. Pixels are visited once in a random order;
a pixel is sampled unless an earlier sample ``q`` lies closer than ``r(q)``, so samples are at least the smaller
of their radii apart and every unsampled pixel is covered (a maximal packing). The radius in pixels is
``r = 1 + scale * d ** vd_power``, ``d`` the distance from the centre normalised by the half sizes (``d = 1`` at
the middle of each edge): about 1 (every pixel) at the centre, growing outwards (variable density).

Acceleration: ``R_achieved = H * W / number of samples`` (calibration included). ``scale`` is found once per
(shape, R, options) for a reference draw (memoised, a function of the options only); each call draws with it and,
when its R misses ``R`` by more than ``tol * R``, searches ``scale`` for that draw (log-log interpolation in a
bracket) until it is within tolerance. On a pixel grid radii in ``(1, sqrt 2]`` already halve the density, so
R below about 2.3 is out of reach (an error).

Random numbers: the pair is chosen as fastMRI's (``rng.randint(len(accelerations))``), then one integer
``rng.randint(2**31)`` seeds a ``numpy.random.Generator`` for the visiting order, so a seed always gives the same
mask. Cost: about 30 ms per 320 x 320 draw (pure Python over the pixels, one CPU core).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch

from mrlearn.errors import input_error
from mrlearn.physics.masks.base import MaskFunc, MaskGeometry, calibration_slices, check_accelerations
from mrlearn.registry import register

_LOG_SCALE_MIN, _LOG_SCALE_MAX = math.log(1e-3), math.log(1e4)  # radius ~1 everywhere .. a handful of samples


def poisson_disc(h: int, w: int, scale: float, calib: tuple[int, int], vd_power: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Boolean ``(h, w)`` variable-density Poisson-disc sample with a fully sampled ``calib`` box (module docstring).

    Guarantee: for samples ``q`` before ``p`` in the visiting order (the box first), ``|p - q| >= r(q)``.
    A sample blocks the pixels at integer squared distance ``d2 < r^2``, i.e. ``d2 <= ceil(r^2) - 1``: the
    offsets of each such bound are listed once, on a grid padded by the largest reach (no border tests).
    """
    yy = (np.arange(h) - h // 2) / (h / 2)
    xx = (np.arange(w) - w // 2) / (w / 2)
    radius = 1.0 + scale * np.hypot(yy[:, None], xx[None, :]) ** vd_power
    bound = np.ceil(radius * radius).astype(np.int64) - 1  # largest blocked squared distance
    pad = math.isqrt(int(bound.max())) + 1
    pw = w + 2 * pad
    index = (np.arange(h)[:, None] + pad) * pw + (np.arange(w)[None, :] + pad)  # pixel -> padded flat index
    bounds = np.zeros((h + 2 * pad) * pw, dtype=np.int64)
    bounds[index.ravel()] = bound.ravel()
    bound_of = bounds.tolist()
    offsets: dict[int, list[int]] = {}
    blocked = bytearray((h + 2 * pad) * pw)
    sampled: list[int] = []

    def take(p: int) -> None:
        sampled.append(p)
        k = bound_of[p]
        offs = offsets.get(k)
        if offs is None:
            r = math.isqrt(k)
            offs = offsets[k] = [dy * pw + dx for dy in range(-r, r + 1) for dx in range(-r, r + 1)
                                 if dy * dy + dx * dx <= k]
        for o in offs:
            blocked[p + o] = 1

    rows, cols = calibration_slices((h, w), calib)
    for p in index[rows, cols].ravel().tolist():
        take(p)
    for p in rng.permutation(index.ravel()).tolist():
        if not blocked[p]:
            take(p)
    out = np.zeros((h + 2 * pad) * pw, dtype=bool)
    out[sampled] = True
    return out.reshape(h + 2 * pad, pw)[pad:pad + h, pad:pad + w].copy()


@register("mask", "poisson")
class PoissonDiscMaskFunc(MaskFunc):
    """2-D variable-density Poisson-disc mask with a fully sampled ``calib`` box (module docstring).

    ``accelerations``: one is chosen per draw, uniformly; ``calib``: the box ``(h, w)`` (an int for a square);
    ``vd_power``: exponent of the radius growth; ``tol``: relative tolerance on R; ``max_iter``: draws of the search.
    """

    def __init__(self, accelerations: Sequence[float], calib: Sequence[int] | int = (16, 16), vd_power: float = 1.0,
                 tol: float = 0.02, seed: int | None = None, max_iter: int = 40):
        accs = check_accelerations(accelerations)
        if isinstance(calib, (int, np.integer)):
            calib = (int(calib), int(calib))
        try:
            box = (int(calib[0]), int(calib[1]))
        except (TypeError, ValueError, IndexError):
            raise input_error("mask calib", f"{calib!r} is not a box size", "give (h, w), e.g. [16, 16]") from None
        if min(box) < 0:
            raise input_error("mask calib", f"{box} has a negative size", "give (h, w) >= 0, e.g. [16, 16]")
        if not vd_power > 0 or not 0 < tol < 1 or max_iter < 1:
            raise input_error("mask poisson options", f"vd_power={vd_power}, tol={tol}, max_iter={max_iter}",
                              "use vd_power > 0, 0 < tol < 1, max_iter >= 1")
        super().__init__(seed)
        self.accelerations = accs
        self.calib = box
        self.vd_power, self.tol, self.max_iter = float(vd_power), float(tol), int(max_iter)

    def __repr__(self) -> str:
        return (f"PoissonDiscMaskFunc(accelerations={self.accelerations}, calib={self.calib}, "
                f"vd_power={self.vd_power}, seed={self.seed})")

    def sample(self, geometry: MaskGeometry, offset: int | None,
               rng: np.random.RandomState) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = geometry.h, geometry.w
        acceleration = self.accelerations[rng.randint(len(self.accelerations))]
        ch, cw = self.calib
        if ch > h or cw > w:
            raise input_error("mask calib", f"calibration box {self.calib} is larger than the k-space {(h, w)}",
                              "use a smaller calibration box")
        if ch * cw > h * w / acceleration:
            raise input_error("mask calib", f"calibration box {self.calib} alone exceeds the "
                              f"{h * w / acceleration:.0f} samples allowed by acceleration {acceleration:g} "
                              f"on {(h, w)}",
                              "use a smaller calibration box or a lower acceleration")
        draw = int(rng.randint(2**31))
        options = (self.calib, self.vd_power, self.tol, self.max_iter)
        start = _reference_scale(h, w, acceleration, options)
        return geometry.plane(_search(h, w, acceleration, draw, start, options)[0]), self.calib


@functools.lru_cache(maxsize=64)
def _reference_scale(h: int, w: int, acceleration: float, options: tuple) -> float:
    """The scale that reaches R for a fixed reference draw (a function of its arguments only, memoised)."""
    start = max(0.05, 0.25 * (acceleration - 1.4))  # empirical, for vd_power = 1
    return _search(h, w, acceleration, 0, start, options)[1]


def _search(h: int, w: int, acceleration: float, draw: int, start: float,
            options: tuple) -> tuple[np.ndarray, float]:
    """Search ``scale`` from ``start`` (visiting order fixed by ``draw``) until R is within tolerance.

    Returns the closest mask and the scale expected to give R exactly; deterministic in its arguments. R grows
    monotonically (up to sampling noise) with ``scale``: the search keeps a bracket and steps by interpolation
    in log-log space, falling back to bisection inside the bracket.
    """
    calib, vd_power, tol, max_iter = options
    total = h * w
    lo: tuple[float, float] | None = None  # (log scale, log R) with R below target
    hi: tuple[float, float] | None = None  # ... with R above target
    target = math.log(acceleration)
    best: tuple[float, np.ndarray, float] | None = None  # (R, mask, log scale) closest to the target
    log_s = math.log(start)
    estimate: float | None = None
    last: tuple[float, float] | None = None
    slope = 0.7  # d log R / d log scale, measured near R = 4 (updated from the draws)
    for _ in range(max_iter):
        m = poisson_disc(h, w, math.exp(log_s), calib, vd_power, np.random.default_rng(draw))
        r = total / max(int(m.sum()), 1)
        if best is None or abs(r - acceleration) < abs(best[0] - acceleration):
            best = (r, m, log_s)
        point = (log_s, math.log(r))
        if last is not None and abs(point[0] - last[0]) > 1e-12:
            slope = min(max((point[1] - last[1]) / (point[0] - last[0]), 0.2), 4.0)
        if abs(r - acceleration) <= tol * acceleration:  # done; estimate the scale that hits R exactly
            estimate = math.exp(log_s + (target - point[1]) / slope)
            break
        if r < acceleration:
            lo = point if lo is None or point[0] > lo[0] else lo
        else:
            hi = point if hi is None or point[0] < hi[0] else hi
        if lo is not None and hi is not None:
            if hi[0] - lo[0] < 1e-3:  # scales within 0.1 %: R is not reachable more closely
                break
            frac = (target - lo[1]) / (hi[1] - lo[1]) if hi[1] > lo[1] else 0.5
            log_s = lo[0] + min(max(frac, 0.1), 0.9) * (hi[0] - lo[0])
        else:
            step = (target - point[1]) / slope
            log_s = min(max(point[0] + min(max(step, -1.0), 1.0), _LOG_SCALE_MIN), _LOG_SCALE_MAX)
            if log_s == point[0]:  # at a limit of the scale: R does not move further
                break
        last = point
    assert best is not None
    if abs(best[0] - acceleration) > 5 * tol * acceleration:
        raise input_error("mask accelerations", f"a Poisson-disc mask on {(h, w)} cannot reach acceleration "
                          f"{acceleration:g} (closest {best[0]:.2f})",
                          "use an acceleration of at least 2.5 or a column mask")
    return best[1], estimate if estimate is not None else math.exp(best[2])
