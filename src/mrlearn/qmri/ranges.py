"""Training ranges of the parameter networks: parsing, checks, derivation from a fit, and the output bounds.

A *training range* is the interval ``[low, high]`` a parameter is drawn from (uniformly) when training signals are
simulated. Units as in :mod:`mrlearn.qmri.signal`: f a fraction, D and D* in um^2/ms, S0 in multiples of the
simulation scale 1 (the network sees signals divided by their lowest-b mean, so S0's range cancels out of the
shapes it learns; it only sets the noise level, sigma = 1 / SNR at S0 = 1).

Checks (:func:`check_ranges`): every parameter of the model, finite ``low < high``, within the model's physical
limits: f in [0, 1], D in [0, 5], D* in [2, 300] (``ivim``) or [0, 300] (``ivim_additive``) -- the default fit
bounds of :mod:`mrlearn.qmri.bounds` -- and S0 > 0.

:func:`ranges_from_fit` derives f, D and D* ranges from a ``mrlearn qmri fit`` folder (MLE or least squares):
per parameter, the voxels of ``mask.nii.gz`` that converged (``converged.nii.gz``) and whose value of that parameter
is not at a fit bound (``at_bound.nii.gz``); from them the 2nd and 98th percentiles ``p2``, ``p98``, widened by
10 % of ``p98 - p2`` on each side and clipped to the physical limits.

:func:`output_bounds` gives the interval a bounded network maps each parameter into: the fit bounds of the model
for the protocol, widened where needed to hold the training ranges and, for S0, 1.25 x the largest S0 label.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mrlearn.errors import input_error
from mrlearn.qmri.bounds import parse_bounds, resolve_bounds
from mrlearn.qmri.signal import get_model

DEFAULT_RANGES: dict[str, list[float]] = {"S0": [0.8, 1.2], "f": [0.1, 0.5], "D": [0.4, 3.0], "Dstar": [10.0, 150.0]}
DERIVED = ("f", "D", "Dstar")  # the parameters ranges_from_fit derives (S0 keeps its range, see the docstring)
PERCENTILES = (2.0, 98.0)
WIDEN = 0.1
MIN_VOXELS = 20


def physical_limits(model: str) -> dict[str, tuple[float, float]]:
    """Per parameter name the interval a training range must lie in (S0: (0, inf); the others: fit bounds)."""
    _, spec = get_model(model)
    limits = {k: (float(lo), float(hi)) for k, lo, hi in zip(spec.names, spec.lower, spec.upper)}
    limits["S0"] = (0.0, math.inf)
    return limits


def check_ranges(ranges: Mapping[str, Sequence[float]], model: str, where: str = "ranges") -> dict[str, list[float]]:
    """Refuse unknown names, missing parameters, non-finite or empty intervals and values past the physical limits;
    returns a plain ``{name: [low, high]}`` in the model's parameter order."""
    limits = physical_limits(model)
    extra = sorted(set(ranges) - set(limits))
    if extra:
        raise input_error(where, f"unknown parameter(s) {extra}", f"use {', '.join(limits)}")
    out: dict[str, list[float]] = {}
    for k, (lim_lo, lim_hi) in limits.items():
        r = ranges.get(k)
        if r is None:
            raise input_error(f"{where}.{k}", "missing", f"give [low, high] for every one of {', '.join(limits)}")
        try:
            lo, hi = (float(x) for x in r)
        except (TypeError, ValueError):
            raise input_error(f"{where}.{k}", f"needs [low, high], got {r!r}", "e.g. f: [0.1, 0.5]") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise input_error(f"{where}.{k}", f"needs [low, high] with finite low < high, got [{lo}, {hi}]",
                              "e.g. f: [0.1, 0.5]")
        if k == "S0" and lo <= 0:
            raise input_error(f"{where}.S0", f"low must be positive, got {lo}", "e.g. S0: [0.8, 1.2]")
        if lo < lim_lo or hi > lim_hi:
            raise input_error(f"{where}.{k}", f"[{lo:g}, {hi:g}] leaves the physical limits [{lim_lo:g}, {lim_hi:g}] "
                              f"of {model}", f"keep {k} within [{lim_lo:g}, {lim_hi:g}]")
        out[k] = [lo, hi]
    return out


def resolve_ranges(model: str, text: str | Mapping[str, Sequence[float]] | None = None,
                   derived: Mapping[str, Sequence[float]] | None = None, where: str = "--ranges") -> dict[str, list[float]]:
    """:data:`DEFAULT_RANGES`, then ``derived`` (from a fit), then ``text`` (``"f=0.05:0.4,D=0.2:2"`` or a dict)
    on top; checked by :func:`check_ranges`."""
    ranges = {k: list(v) for k, v in DEFAULT_RANGES.items()}
    ranges.update({k: list(v) for k, v in (derived or {}).items()})
    if isinstance(text, str):
        ranges.update({k: list(v) for k, v in parse_bounds(text, model, where).items()})
    elif text is not None:
        ranges.update({k: list(v) for k, v in text.items()})
    return check_ranges(ranges, model, where)


def _volume(folder: Path, name: str, shape: tuple[int, ...] | None) -> np.ndarray:
    import nibabel as nib

    path = folder / name
    if not path.is_file():
        raise input_error("--ranges-from", f"{path} not found",
                          "give a folder written by 'mrlearn qmri fit --method mle' (or nlls) of this mrlearn; "
                          "rerun the fit into a new folder if it is older")
    try:
        vol = np.asarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # noqa: BLE001 - an unreadable map is a user error
        raise input_error(path, f"cannot read it as NIfTI ({exc.__class__.__name__})", "rerun 'mrlearn qmri fit'") from exc
    if shape is not None and vol.shape != shape:
        raise input_error(path, f"shape {vol.shape} differs from mask.nii.gz {shape}", "give one fit folder, unchanged")
    return vol


def ranges_from_fit(folder: str | Path, model: str) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """f, D and D* ranges from the fit in ``folder`` (see the module docstring); returns (ranges, record) where the
    record lists per parameter the voxels used, the percentiles and the widened range."""
    folder = Path(folder)
    if not folder.is_dir():
        raise input_error("--ranges-from", f"{folder} is not a folder", "give the --out folder of 'mrlearn qmri fit'")
    fit_json = folder / "fit.json"
    if not fit_json.is_file():
        raise input_error("--ranges-from", f"{fit_json} not found", "give the --out folder of 'mrlearn qmri fit'")
    try:
        info = json.loads(fit_json.read_text())
    except (OSError, ValueError) as exc:
        raise input_error(fit_json, f"cannot read it ({exc.__class__.__name__})", "rerun 'mrlearn qmri fit'") from exc
    method, fit_model = info.get("method"), info.get("model")
    if method not in ("mle", "nlls"):
        raise input_error("--ranges-from", f"{folder} holds a {method!r} fit",
                          "derive ranges from a fit by the model itself: mrlearn qmri fit --method mle")
    if fit_model != model:
        raise input_error("--ranges-from", f"the fit in {folder} used --signal-model {fit_model}, training uses {model}",
                          f"train with --signal-model {fit_model} or refit with --signal-model {model}")
    _, spec = get_model(model)
    mask = _volume(folder, "mask.nii.gz", None) > 0
    converged = _volume(folder, "converged.nii.gz", mask.shape) > 0
    at_bound = _volume(folder, "at_bound.nii.gz", mask.shape).astype(np.int64)
    limits = physical_limits(model)
    ranges: dict[str, list[float]] = {}
    record: dict[str, Any] = {"folder": str(folder), "method": method, "percentiles": list(PERCENTILES),
                              "widen": WIDEN, "mask_voxels": int(mask.sum()),
                              "converged_voxels": int((mask & converged).sum()), "parameters": {}}
    for k in DERIVED:
        i = spec.names.index(k)
        use = mask & converged & ((at_bound >> i) & 1 == 0)
        vals = _volume(folder, f"{k}.nii.gz", mask.shape)[use].astype(np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size < MIN_VOXELS:
            raise input_error("--ranges-from", f"{k}: only {vals.size} voxels of {folder} are in the mask, converged and "
                              f"not at a fit bound (need {MIN_VOXELS})", f"give --ranges {k}=LOW:HIGH instead")
        p_lo, p_hi = (float(v) for v in np.percentile(vals, PERCENTILES))
        if not p_hi > p_lo:
            raise input_error("--ranges-from", f"{k}: the {PERCENTILES[0]:g}th and {PERCENTILES[1]:g}th percentiles are "
                              f"equal ({p_lo:g})", f"give --ranges {k}=LOW:HIGH instead")
        pad = WIDEN * (p_hi - p_lo)
        lo, hi = max(limits[k][0], p_lo - pad), min(limits[k][1], p_hi + pad)
        ranges[k] = [lo, hi]
        record["parameters"][k] = {"voxels": int(vals.size), "percentiles": [p_lo, p_hi], "range": [lo, hi]}
    return ranges, record


def output_bounds(model: str, bvals: torch.Tensor | Sequence[float], ranges: Mapping[str, Sequence[float]],
                  s0_label_max: float | None = None,
                  fit_bounds: Mapping[str, Sequence[float]] | None = None) -> tuple[list[float], list[float]]:
    """(lower, upper) per parameter of the model, in its units (S0: multiples of the lowest-b signal)."""
    _, spec = get_model(model)
    pairs = resolve_bounds(model, bvals, {k: tuple(v) for k, v in fit_bounds.items()} if fit_bounds else None)
    lower, upper = [], []
    for k, (lo, hi) in zip(spec.names, pairs):
        r = ranges.get(k, (lo, hi))
        lo, hi = min(float(lo), float(r[0])), max(float(hi), float(r[1]))
        if k == "S0" and s0_label_max is not None:
            hi = max(hi, 1.25 * float(s0_label_max))
        lower.append(lo)
        upper.append(hi)
    return lower, upper


def format_ranges(ranges: Mapping[str, Sequence[float]]) -> str:
    """``S0 0.8-1.2, f 0.1-0.5, D 0.4-3, Dstar 10-150`` (4 significant digits)."""
    return ", ".join(f"{k} {v[0]:.4g}-{v[1]:.4g}" for k, v in ranges.items())
