"""Undersampling masks: fastMRI-compatible 1-D Cartesian columns and 2-D variable-density Poisson disc.

Conventions (REFERENCE section 3):
- A mask is float32 with values 0/1. Column masks are shaped ``(1, W)`` (they broadcast over the rows and over a
  coil axis of ``[C, H, W]`` k-space); 2-D masks are shaped ``(H, W)``. The k-space centre (DC) is at
  ``(H // 2, W // 2)`` (centered FFT, ``physics.fft``).
- Column masks keep ``n_low = round(W * center_fraction)`` centre columns, starting at ``(W - n_low + 1) // 2``
  (as fastMRI). The other columns are chosen by the mask type:
  ``random``: each kept with probability ``(W / R - n_low) / (W - n_low)`` (so R holds only in expectation);
  ``equispaced``: every ``round(R)``-th column from a random offset (the total undershoots R);
  ``equispaced_fraction``: exactly ``round(W / R) - n_low`` equally spaced columns chosen among the non-centre
  columns, so the total is exactly ``round(W / R)`` (our exact variant of fastMRI's fraction mask).
- ``poisson``: 2-D variable-density Poisson disc with a fully sampled calibration box around the centre; the
  exclusion radius grows from 1 pixel at the centre (linearly by default) and its scale is tuned by
  bisection until the achieved acceleration is within ``tol`` (2 %) of R.
- Several ``(center_fraction, acceleration)`` pairs may be given; each draw picks one pair uniformly.
- Randomness comes only from the ``numpy.random.Generator`` passed in; validation/test masks are fixed per volume
  with :func:`fixed_mask`, seeded by :func:`seed_from_name` (SHA-256 of the file name, stable across runs).
- ``padding``: fastMRI's acquired column range ``(left, right)``: columns ``< left`` and ``>= right`` are
  zero-padded in the file and are zeroed in the mask (``mask[..., :left] = 0; mask[..., right:] = 0``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mrlearn.errors import input_error

MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "poisson")

RngLike = np.random.Generator | int | None


@dataclass(frozen=True)
class MaskSample:
    """One drawn mask with what produced it.

    ``acs``: number of fully sampled centre columns (column masks) or the calibration box ``(h, w)`` (2-D).
    ``acceleration``/``center_fraction``: the nominal pair drawn (``center_fraction`` is None for Poisson).
    """

    mask: np.ndarray
    acs: int | tuple[int, int]
    acceleration: float
    center_fraction: float | None


def _as_rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _hw(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) < 2 or any(int(s) < 1 for s in shape[-2:]):
        raise input_error("mask shape", f"expected (H, W) with positive sizes, got {tuple(shape)}",
                          "pass the k-space shape (its last two axes are used)")
    return int(shape[-2]), int(shape[-1])


def center_columns(width: int, n_low: int) -> np.ndarray:
    """Boolean ``(W,)``: the ``n_low`` centre columns, starting at ``(W - n_low + 1) // 2`` (fastMRI)."""
    cols = np.zeros(width, dtype=bool)
    start = (width - n_low + 1) // 2
    cols[start:start + n_low] = True
    return cols


def calibration_slices(shape: Sequence[int], acs: int | tuple[int, int]) -> tuple[slice, slice]:
    """Row/column slices of the fully sampled centre region of a mask for ``shape`` (H, W).

    ``acs`` is an int (centre columns of a column mask: all rows) or a box ``(h, w)``; the box holds index
    ``n // 2`` on both axes, as :func:`mrlearn.physics.complex.center_crop`.
    """
    h, w = _hw(shape)
    if isinstance(acs, (int, np.integer)):
        start = (w - int(acs) + 1) // 2
        return slice(0, h), slice(start, start + int(acs))
    ch, cw = int(acs[0]), int(acs[1])
    top, left = h // 2 - ch // 2, w // 2 - cw // 2
    return slice(top, top + ch), slice(left, left + cw)


def _apply_padding(mask: np.ndarray, padding: tuple[int, int] | None) -> np.ndarray:
    if padding is None:
        return mask
    left, right = int(padding[0]), int(padding[1])
    width = mask.shape[-1]
    if not 0 <= left < right <= width:
        raise input_error("mask padding", f"acquired column range {tuple(padding)} does not fit width {width}",
                          "give (left, right) with 0 <= left < right <= W")
    mask[..., :left] = 0
    mask[..., right:] = 0
    return mask


class MaskFunc:
    """Base class: draws a mask for a k-space shape from a pair chosen uniformly among ``(cf, R)`` pairs.

    ``mask_func(shape, rng, padding=None) -> np.ndarray`` float32 ``(1, W)`` or ``(H, W)``; after a call,
    ``mask_func.acs`` holds the centre columns (int) or calibration box of that draw. :meth:`sample` returns the
    mask together with its ``acs`` and the nominal pair, without relying on that attribute.
    """

    kind = "base"

    def __init__(self, accelerations: Sequence[float], center_fractions: Sequence[float] | None):
        accs = _float_list(accelerations, "accelerations")
        if not accs:
            raise input_error("mask accelerations", "no acceleration given", "give at least one, e.g. [4]")
        if any(not math.isfinite(r) or r < 1 for r in accs):
            raise input_error("mask accelerations", f"{accs} contains a value below 1 or not finite",
                              "accelerations are undersampling factors >= 1, e.g. [4, 8]")
        self.accelerations = accs
        cfs = _float_list(center_fractions, "center_fractions")
        self.center_fractions = cfs
        self.acs: int | tuple[int, int] | None = None

    def choose(self, rng: np.random.Generator) -> tuple[float | None, float]:
        """Pick one ``(center_fraction, acceleration)`` pair uniformly."""
        i = int(rng.integers(len(self.accelerations))) if len(self.accelerations) > 1 else 0
        cf = self.center_fractions[i] if self.center_fractions else None
        return cf, self.accelerations[i]

    def sample(self, shape: Sequence[int], rng: RngLike = None, padding: tuple[int, int] | None = None) -> MaskSample:
        raise NotImplementedError

    def __call__(self, shape: Sequence[int], rng: RngLike = None,
                 padding: tuple[int, int] | None = None) -> np.ndarray:
        drawn = self.sample(shape, rng, padding)
        self.acs = drawn.acs
        return drawn.mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(accelerations={self.accelerations}, center_fractions={self.center_fractions})"


def _float_list(values, name: str) -> list[float]:
    if values is None:
        return []
    if isinstance(values, (int, float, np.number)):
        values = [values]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise input_error(f"mask {name}", f"{values!r} is not a list of numbers", "give e.g. [4, 8]") from None


class ColumnMaskFunc(MaskFunc):
    """1-D Cartesian column masks (fastMRI): a centre block of ``round(W * cf)`` columns plus others."""

    def __init__(self, accelerations: Sequence[float], center_fractions: Sequence[float]):
        super().__init__(accelerations, center_fractions)
        if len(self.center_fractions) != len(self.accelerations):
            raise input_error("mask center_fractions",
                              f"{len(self.center_fractions)} centre fractions for {len(self.accelerations)} "
                              "accelerations", "give one centre fraction per acceleration, e.g. [0.08, 0.04] for [4, 8]")
        if any(not 0 <= cf <= 1 for cf in self.center_fractions):
            raise input_error("mask center_fractions", f"{self.center_fractions} has a value outside [0, 1]",
                              "centre fractions are fractions of the width, e.g. 0.08")

    def _others(self, width: int, n_low: int, acceleration: float, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def sample(self, shape: Sequence[int], rng: RngLike = None, padding: tuple[int, int] | None = None) -> MaskSample:
        rng = _as_rng(rng)
        _, width = _hw(shape)
        cf, acceleration = self.choose(rng)
        n_low = round(width * cf)
        if n_low > width / acceleration + 1e-9:
            raise input_error("mask center_fractions",
                              f"{n_low} centre columns (fraction {cf}) exceed the {width / acceleration:.1f} columns "
                              f"allowed by acceleration {acceleration:g} at width {width}",
                              "lower the centre fraction or the acceleration")
        centre = center_columns(width, n_low)
        cols = centre | self._others(width, n_low, acceleration, rng)
        mask = _apply_padding(cols.astype(np.float32)[None, :], padding)
        return MaskSample(mask, n_low, acceleration, cf)


class RandomMaskFunc(ColumnMaskFunc):
    """fastMRI random columns: each non-centre column kept with p = ``(W / R - n_low) / (W - n_low)``."""

    kind = "random"

    def _others(self, width, n_low, acceleration, rng):
        if width == n_low:
            return np.zeros(width, dtype=bool)
        prob = (width / acceleration - n_low) / (width - n_low)
        return rng.uniform(size=width) < prob


class EquispacedMaskFunc(ColumnMaskFunc):
    """fastMRI equispaced: every ``round(R)``-th column from a random offset in ``[0, round(R))``, plus the centre."""

    kind = "equispaced"

    def _others(self, width, n_low, acceleration, rng):
        step = max(1, round(acceleration))
        offset = int(rng.integers(step))
        cols = np.zeros(width, dtype=bool)
        cols[offset::step] = True
        return cols


class EquispacedFractionMaskFunc(ColumnMaskFunc):
    """Exact-R equispaced: ``round(W / R) - n_low`` columns equally spaced among the non-centre columns.

    The total number of sampled columns is exactly ``round(W / R)``; the spacing (in non-centre columns) is
    ``(W - n_low) / k`` with a random offset in ``[0, spacing)``.
    """

    kind = "equispaced_fraction"

    def _others(self, width, n_low, acceleration, rng):
        cols = np.zeros(width, dtype=bool)
        k = round(width / acceleration) - n_low
        if k <= 0:
            return cols
        free = np.flatnonzero(~center_columns(width, n_low))
        spacing = free.size / k
        offset = rng.uniform(0, spacing)
        idx = np.minimum(np.floor(offset + spacing * np.arange(k)).astype(np.int64), free.size - 1)
        cols[free[idx]] = True
        return cols


_LOG_SCALE_MIN, _LOG_SCALE_MAX = math.log(1e-3), math.log(1e4)  # radius ~1 everywhere .. a handful of samples


class PoissonDiscMaskFunc(MaskFunc):
    """2-D variable-density Poisson-disc mask ``(H, W)`` with a fully sampled ``calib`` box at the centre.

    Bridson sampling on the k-space grid: from active points, up to ``candidates`` tries in the annulus
    ``[r, 2r)`` around them; a candidate is kept when no earlier sample ``q`` lies closer than ``r(q)``. The radius
    (pixels) is ``r(k) = 1 + scale * d(k) ** vd_power`` with ``d`` the distance from the centre normalised
    by the half sizes (``d = 1`` at the middle of each edge). ``scale`` is searched (bisection with log-log
    interpolation steps, the draw's random numbers held fixed) until ``|R_achieved - R| <= tol * R``, starting from
    a reference scale found once per (shape, R) with a fixed seed, so a seed always gives the same mask.
    ``R_achieved = H * W / number of samples`` (calibration included). On a pixel grid radii in ``(1, sqrt 2]``
    already halve the density, so R below about 2.3 is out of reach (an error). Cost: ~1 s per 320 x 320 draw
    on one CPU core (pure Python Bridson).
    """

    kind = "poisson"

    def __init__(self, accelerations: Sequence[float], calib: tuple[int, int] | int = (16, 16),
                 vd_power: float = 1.0, tol: float = 0.02, candidates: int = 30, max_iter: int = 40):
        super().__init__(accelerations, None)
        if isinstance(calib, (int, np.integer)):
            calib = (int(calib), int(calib))
        try:
            calib = (int(calib[0]), int(calib[1]))
        except (TypeError, ValueError, IndexError):
            raise input_error("mask calib", f"{calib!r} is not a box size", "give (h, w), e.g. [16, 16]") from None
        if min(calib) < 0:
            raise input_error("mask calib", f"{calib} has a negative size", "give (h, w) >= 0, e.g. [16, 16]")
        if not vd_power > 0 or not 0 < tol < 1 or candidates < 1:
            raise input_error("mask poisson options", f"vd_power={vd_power}, tol={tol}, candidates={candidates}",
                              "use vd_power > 0, 0 < tol < 1, candidates >= 1")
        self.calib = calib
        self.vd_power = float(vd_power)
        self.tol = float(tol)
        self.candidates = int(candidates)
        self.max_iter = int(max_iter)
        self._scale_cache: dict[tuple, float] = {}

    def __repr__(self) -> str:
        return (f"PoissonDiscMaskFunc(accelerations={self.accelerations}, calib={self.calib}, "
                f"vd_power={self.vd_power})")

    def sample(self, shape: Sequence[int], rng: RngLike = None, padding: tuple[int, int] | None = None) -> MaskSample:
        rng = _as_rng(rng)
        h, w = _hw(shape)
        _, acceleration = self.choose(rng)
        ch, cw = self.calib
        if ch > h or cw > w:
            raise input_error("mask calib", f"calibration box {self.calib} is larger than the k-space {(h, w)}",
                              "use a smaller calibration box")
        if ch * cw > h * w / acceleration:
            raise input_error("mask calib", f"calibration box {self.calib} alone exceeds the {h * w / acceleration:.0f} "
                              f"samples allowed by acceleration {acceleration:g} on {(h, w)}",
                              "use a smaller calibration box or a lower acceleration")
        seed = int(rng.integers(2**63 - 1))
        mask = self._search(h, w, acceleration, seed, self._reference_scale(h, w, acceleration))[0]
        mask = _apply_padding(mask.astype(np.float32), padding)
        return MaskSample(mask, self.calib, acceleration, None)

    def _draw(self, h: int, w: int, scale: float, seed: int) -> np.ndarray:
        return poisson_disc(h, w, scale, self.calib, self.vd_power, np.random.default_rng(seed), self.candidates)

    def _reference_scale(self, h: int, w: int, acceleration: float) -> float:
        """The scale that reaches R for a fixed reference seed (memoised; a function of the options only)."""
        key = (h, w, acceleration)
        if key not in self._scale_cache:
            start = max(0.05, 0.25 * (acceleration - 1.4))  # empirical, for vd_power = 1
            self._scale_cache[key] = self._search(h, w, acceleration, 0, start)[1]
        return self._scale_cache[key]

    def _search(self, h: int, w: int, acceleration: float, seed: int, start: float) -> tuple[np.ndarray, float]:
        """Search ``scale`` from ``start`` (random numbers fixed by ``seed``) until R is within tolerance.

        Returns the closest mask and the scale expected to give R exactly. Deterministic in its arguments, so a
        seed always gives the same mask whatever was drawn before.

        R grows monotonically (up to sampling noise) with ``scale``; the search keeps a bracket and steps by
        interpolation in log-log space, falling back to bisection inside the bracket.
        """
        total = h * w
        lo: tuple[float, float] | None = None  # (log scale, log R) with R below target
        hi: tuple[float, float] | None = None  # ... with R above target
        target = math.log(acceleration)
        best: tuple[float, np.ndarray, float] | None = None  # (R, mask, log scale) closest to the target
        log_s = math.log(start)
        estimate: float | None = None
        last: tuple[float, float] | None = None
        slope = 0.7  # d log R / d log scale, measured near R = 4 (updated from the draws)
        for _ in range(max(1, self.max_iter)):
            m = self._draw(h, w, math.exp(log_s), seed)
            r = total / max(int(m.sum()), 1)
            if best is None or abs(r - acceleration) < abs(best[0] - acceleration):
                best = (r, m, log_s)
            point = (log_s, math.log(r))
            if last is not None and abs(point[0] - last[0]) > 1e-12:
                slope = min(max((point[1] - last[1]) / (point[0] - last[0]), 0.2), 4.0)
            if abs(r - acceleration) <= self.tol * acceleration:  # done; estimate the scale that hits R exactly
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
        if abs(best[0] - acceleration) > 5 * self.tol * acceleration:
            raise input_error("mask accelerations", f"a Poisson-disc mask on {(h, w)} cannot reach acceleration "
                              f"{acceleration:g} (closest {best[0]:.2f})",
                              "use an acceleration of at least 2.5 or a column mask")
        return best[1], estimate if estimate is not None else math.exp(best[2])


def poisson_disc(h: int, w: int, scale: float, calib: tuple[int, int], vd_power: float,
                 rng: np.random.Generator, candidates: int = 30) -> np.ndarray:
    """Boolean ``(h, w)`` variable-density Poisson-disc sample (Bridson) with a full calibration box.

    Radius ``r(y, x) = 1 + scale * d ** vd_power`` pixels, ``d = hypot((y - h//2) / (h/2),
    (x - w//2) / (w/2))``. Guarantee: for samples ``p`` before ``q`` (outside the box among themselves),
    ``|p - q| >= r(p)``; so every pair is at least ``min(r(p), r(q))`` apart.
    """
    cy, cx = h // 2, w // 2
    yy = (np.arange(h) - cy) / (h / 2)
    xx = (np.arange(w) - cx) / (w / 2)
    dist = np.hypot(yy[:, None], xx[None, :])
    radius = 1.0 + scale * dist ** vd_power
    rad = radius.ravel().tolist()
    blocked_buf = bytearray(h * w)  # 1 where a sample lies closer than that sample's radius
    blocked = np.frombuffer(blocked_buf, dtype=np.uint8).reshape(h, w)
    sampled = np.zeros((h, w), dtype=bool)
    offsets: dict[int, np.ndarray] = {}

    def block(y: int, x: int) -> None:
        r = rad[y * w + x]
        m = int(math.ceil(r))
        d2 = offsets.get(m)
        if d2 is None:
            o = np.arange(-m, m + 1)
            d2 = offsets[m] = o[:, None] ** 2 + o[None, :] ** 2
        y0, y1, x0, x1 = max(0, y - m), min(h, y + m + 1), max(0, x - m), min(w, x + m + 1)
        disc = d2[y0 - y + m:y1 - y + m, x0 - x + m:x1 - x + m] < r * r
        blocked[y0:y1, x0:x1] |= disc

    active: list[int] = []
    box_r, box_c = calibration_slices((h, w), calib)
    sampled[box_r, box_c] = True
    for y in range(box_r.start, box_r.stop):
        for x in range(box_c.start, box_c.stop):
            block(y, x)
            if y in (box_r.start, box_r.stop - 1) or x in (box_c.start, box_c.stop - 1):
                active.append(y * w + x)
    if not active:  # no calibration box: start at the centre
        sampled[cy, cx] = True
        block(cy, cx)
        active.append(cy * w + cx)

    buf: list[float] = []
    pos = 0
    two_pi = 2.0 * math.pi
    while active:
        if pos + 3 * candidates + 1 > len(buf):
            buf = rng.random(max(65536, 4 * candidates)).tolist()
            pos = 0
        i = int(buf[pos] * len(active))
        pos += 1
        p = active[i]
        py, px = divmod(p, w)
        r = rad[p]
        found = False
        for _ in range(candidates):
            rr = r * math.sqrt(1.0 + 3.0 * buf[pos])  # uniform in area over [r, 2r)
            a = two_pi * buf[pos + 1]
            pos += 2
            y = int(round(py + rr * math.sin(a)))
            x = int(round(px + rr * math.cos(a)))
            if 0 <= y < h and 0 <= x < w and not blocked_buf[y * w + x]:
                sampled[y, x] = True
                block(y, x)
                active.append(y * w + x)
                found = True
                break
        if not found:
            active[i] = active[-1]
            active.pop()
    return sampled


def build_mask_func(type: str, accelerations: Sequence[float], center_fractions: Sequence[float] | None = None,
                    **kw) -> MaskFunc:
    """A :class:`MaskFunc` by name: ``random | equispaced | equispaced_fraction | poisson``.

    Column types need one centre fraction per acceleration; ``poisson`` takes ``calib=(h, w)`` (default 16 x 16),
    ``vd_power``, ``tol`` instead of centre fractions.
    """
    name = str(type).lower()
    classes = {"random": RandomMaskFunc, "equispaced": EquispacedMaskFunc,
               "equispaced_fraction": EquispacedFractionMaskFunc}
    if name in classes:
        if kw:
            raise input_error("mask", f"unknown option(s) {sorted(kw)} for mask type {name!r}",
                              "column masks take only accelerations and center_fractions")
        if center_fractions is None:
            raise input_error("mask center_fractions", f"missing for mask type {name!r}",
                              "give one centre fraction per acceleration, e.g. [0.08] for [4]")
        return classes[name](accelerations, center_fractions)
    if name == "poisson":
        if center_fractions:
            raise input_error("mask center_fractions", "do not apply to poisson masks",
                              "remove them and set the calibration box with calib: [16, 16]")
        unknown = set(kw) - {"calib", "vd_power", "tol", "candidates", "max_iter"}
        if unknown:
            raise input_error("mask", f"unknown option(s) {sorted(unknown)} for mask type 'poisson'",
                              "use calib, vd_power, tol, candidates, max_iter")
        return PoissonDiscMaskFunc(accelerations, **kw)
    raise input_error("mask type", f"unknown mask type {type!r}", f"use one of {', '.join(MASK_TYPES)}")


def seed_from_name(fname: str | Path, extra: int = 0) -> int:
    """A seed in ``[0, 2**63)`` from the file's base name (SHA-256; stable across processes, runs and folders)."""
    name = Path(str(fname)).name
    digest = hashlib.sha256(f"{name}\x00{int(extra)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def fixed_mask(mask_func: MaskFunc, shape: Sequence[int], fname: str | Path,
               padding: tuple[int, int] | None = None, extra: int = 0) -> np.ndarray:
    """The validation/test mask of a volume: a draw seeded only by the file name (same for all its slices)."""
    return mask_func(shape, np.random.default_rng(seed_from_name(fname, extra)), padding)


def achieved_acceleration(mask: np.ndarray, shape: Sequence[int], padding: tuple[int, int] | None = None) -> float:
    """Acquired/sampled ratio of ``mask`` (broadcast to the ``(H, W)`` of ``shape``).

    With ``padding`` (left, right) only the acquired columns ``left:right`` count. ``inf`` for an empty mask.
    """
    h, w = _hw(shape)
    m = np.asarray(mask)
    try:
        m = np.broadcast_to(m.reshape(m.shape[-2:]) if m.ndim >= 2 else m, (h, w))
    except ValueError:
        raise input_error("mask", f"shape {np.shape(mask)} does not fit k-space {(h, w)}",
                          "use a (1, W) column mask or an (H, W) mask") from None
    if padding is not None:
        m = m[:, int(padding[0]):int(padding[1])]
    n = float(np.count_nonzero(m))
    return m.size / n if n else math.inf
