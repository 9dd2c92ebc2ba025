"""Fit bounds from the physics and the data, user overrides, and counts of voxels held at each bound.

Signals are normalised per voxel by their mean at the lowest b-value (so S0 is in multiples of that signal).
Default bounds of the diffusion models (units of :mod:`mrlearn.qmri.signal`):

- f: 0 to 1 (a volume fraction).
- D: 0 to 5 um^2/ms (free water at body temperature is 3.0; the margin leaves room for noise).
- D*: 2 to 300 um^2/ms for ``ivim`` (a pseudo-diffusion faster than any D), 0 to 300 for ``ivim_additive``
  (there D* is added on top of D).
- S0: 0 to ``S0_max = 2 / u_min``, where ``u_min`` is the largest physically plausible attenuation between
  b = 0 and the lowest acquired b-value b_min: the smallest normalised model signal S(b_min) / S0 with D and D* at
  any value within their bounds and f at most ``f_p = min(f_upper, F_PLAUSIBLE)``::

      u_min = min over f in [0, f_p] of  f exp(-b_min D*_max) + (1 - f) exp(-b_min D_max)
            = min(exp(-b_min D_max), f_p exp(-b_min D*_max) + (1 - f_p) exp(-b_min D_max))

  (the model signal decreases in D and D*, and is linear in f, so the minimum lies at the upper D, D* and at an
  end of the f interval; for ``ivim_additive`` the fast rate is D_max + D*_max). Physics: S0 is the signal at
  b = 0; at b_min a compartment can have lost at most what free diffusion at D_max takes (slow, tissue water) or
  all of its signal (fast, perfusing blood, D* -> large). The fast compartment is blood in capillaries, a fraction
  of the voxel: perfusion fractions of tissue lie well below ``F_PLAUSIBLE = 0.5`` (about 0.03-0.1 in brain and
  cord, 0.2-0.4 in liver, kidney, placenta), so at most half the b = 0 signal can vanish by the perfusion
  attenuation before b_min. The factor 2 leaves room for noise in the lowest-b signal and for f up to 0.75 at
  the worst-case D = D_max. With b = 0 acquired, u_min = 1 and S0_max = 2; lowest b 5 s/mm^2: about 3.3;
  lowest b 50: about 5.1 (the worst-case slow decay exp(-0.05 * 5) = 0.78 times 1 - f_p).
  Why not f_p = 1: the attenuation is then unbounded (exp(-b_min D*_max) = 3e-7 at b_min = 50), and without
  b = 0 the data cannot bound S0: a fast compartment of huge S0 f that has decayed by the second b-value fits
  the lowest-b point alone, and least squares drifts along S0 -> infinity, f -> 1 without converging. With the
  bound such a fit stops on S0 = S0_max, where the bound check (:mod:`mrlearn.qmri.boundcheck`) tests it.
  The S0 bound is derived from the final f, D, D* bounds (user overrides included) unless S0 is set itself.
- ``adc``: S0 as above with ``u_min = exp(-b_min * ADC_max)``, ADC 0 to 5 um^2/ms; ``t2``: S0 0 to 2, T2 1 to
  2000 ms (echo times need not start near 0, so S0 keeps a fixed bound there).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from mrlearn.errors import input_error
from mrlearn.qmri.signal import B_SCALE, get_model

#: tolerance in normalised coordinates (fraction of the bound interval) for "at a bound"
AT_BOUND_TOL = 1e-6
#: largest perfusion fraction used for the S0 bound (see the module docstring); the fit's f bound may be wider
F_PLAUSIBLE = 0.5
#: headroom of the S0 bound over the lowest-b signal divided by the largest plausible attenuation
S0_HEADROOM = 2.0


def lowest_b_floor(model: str, bmin: float, lo: Sequence[float], hi: Sequence[float]) -> float:
    """``u_min``: the smallest normalised model signal S(b_min) / S0 with f <= min(f_upper, F_PLAUSIBLE) and D, D*
    within their bounds (1 for b_min = 0; see the module docstring)."""
    beta = bmin * B_SCALE
    if model in ("ivim", "ivim_additive"):
        f_p, d_hi, ds_hi = min(hi[1], F_PLAUSIBLE), hi[2], hi[3]
        slow = math.exp(-beta * d_hi)
        fast = math.exp(-beta * (ds_hi + d_hi)) if model == "ivim_additive" else math.exp(-beta * ds_hi)
        return min(slow, f_p * fast + (1 - f_p) * slow)  # linear in f: the minimum is at an end
    if model == "adc":
        return math.exp(-beta * hi[1])
    return 1.0  # t2: fixed S0 bound of 2


def s0_upper(model: str, bvals: torch.Tensor | Sequence[float], pairs: Sequence[Sequence[float]]) -> float:
    """``S0_HEADROOM / u_min`` for the lowest of ``bvals`` and the bounds ``pairs`` of the other parameters."""
    bmin = float(torch.as_tensor(bvals, dtype=torch.float64).min())
    lo, hi = [p[0] for p in pairs], [p[1] for p in pairs]
    return S0_HEADROOM / lowest_b_floor(model, bmin, lo, hi)


def default_bounds(model: str, bvals: torch.Tensor | Sequence[float]) -> list[tuple[float, float]]:
    """The documented default bounds (see the module docstring) for ``model`` and this protocol."""
    _, spec = get_model(model)
    pairs = list(zip(spec.lower, spec.upper))
    pairs[0] = (pairs[0][0], s0_upper(model, bvals, pairs))
    return pairs


def parse_bounds(text: str | None, model: str, where: str = "--bounds") -> dict[str, tuple[float, float]]:
    """``"f=0:0.5,Dstar=3:100"`` -> ``{"f": (0, 0.5), "Dstar": (3, 100)}`` (names of the model's parameters)."""
    if not text:
        return {}
    _, spec = get_model(model)
    out: dict[str, tuple[float, float]] = {}
    for item in text.split(","):
        name, _, rng = item.strip().partition("=")
        lo_s, _, hi_s = rng.partition(":")
        if name not in spec.names:
            raise input_error(where, f"unknown parameter {name!r}", f"use names of {', '.join(spec.names)}, e.g. f=0:0.5")
        try:
            lo, hi = float(lo_s), float(hi_s)
        except ValueError:
            raise input_error(where, f"cannot read {item.strip()!r}", "write NAME=LOW:HIGH, e.g. Dstar=3:100") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise input_error(where, f"{name}: need finite LOW < HIGH, got {lo}:{hi}", "e.g. f=0:0.5")
        out[name] = (lo, hi)
    return out


def resolve_bounds(model: str, bvals: torch.Tensor | Sequence[float],
                   overrides: dict[str, tuple[float, float]] | Sequence[Sequence[float]] | None = None
                   ) -> list[tuple[float, float]]:
    """Default bounds with ``overrides`` (by name, or a full list of pairs) applied."""
    _, spec = get_model(model)
    bounds = default_bounds(model, bvals)
    if overrides is None:
        return bounds
    if isinstance(overrides, dict):
        for k, pair in overrides.items():
            bounds[spec.names.index(k)] = (float(pair[0]), float(pair[1]))
        if spec.names[0] not in overrides:  # the S0 bound follows the f, D, D* bounds given
            bounds[0] = (bounds[0][0], s0_upper(model, bvals, bounds))
        return bounds
    if len(overrides) != len(spec.names):
        raise input_error("bounds", f"need {len(spec.names)} (lower, upper) pairs for {model}, got {len(overrides)}",
                          f"give one pair per parameter {spec.names}")
    return [(float(b[0]), float(b[1])) for b in overrides]


def bound_counts(at_lower: torch.Tensor, at_upper: torch.Tensor, names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per parameter: the number of voxels at its lower and at its upper bound (``at_* [V, P]`` bool)."""
    lo = at_lower.sum(0).tolist()
    hi = at_upper.sum(0).tolist()
    return {k: {"lower": int(a), "upper": int(b)} for k, a, b in zip(names, lo, hi)}


def format_bound_counts(counts: dict[str, dict[str, int]], bounds: Sequence[Sequence[float]], total: int) -> str:
    """One line: ``at bounds (of N voxels): f 0 at 0, 3 at 1; ...`` (parameters with no voxel at a bound: 'none')."""
    parts = []
    for (k, c), (lo, hi) in zip(counts.items(), bounds):
        if c["lower"] or c["upper"]:
            parts.append(f"{k} {c['lower']} at {lo:.4g}, {c['upper']} at {hi:.4g}")
    return f"at bounds (of {total} voxels): " + ("; ".join(parts) if parts else "none")
