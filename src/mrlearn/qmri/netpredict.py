"""Parameter maps from a trained network: outputs held to physical bounds, voxels outside the training ranges flagged.

- ``params = net(signals) * scales`` in float64 (signals ``[V, N]`` normalised by their lowest-b mean; S0 comes out
  in multiples of that signal), then clamped to the output bounds. For a ``sigmoid`` network these are the bounds it
  was built with, so the clamp removes float rounding only. For an ``abs`` network (the label study's, or one saved
  before the bounded output existed) they are the default fit bounds of its model and protocol
  (:func:`mrlearn.qmri.bounds.default_bounds`); the voxels clamped are counted per parameter.
- Training ranges: those saved with the network. A ``mrlearn qmri train`` network saved before they were recorded
  was trained in :data:`mrlearn.qmri.ranges.DEFAULT_RANGES` (then fixed); for other networks without ranges
  nothing is flagged and the info says so.
- Flag code per voxel (uint8): the sum of ``2**i`` over the parameters ``i`` (order of ``names``: S0 0, f 1, D 2,
  D* 3) whose estimate lies outside its training range; S0 is never flagged (its range cancels out in the
  normalisation, see :mod:`mrlearn.qmri.ranges`). 0 = every estimate inside the training ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mrlearn.qmri.bounds import default_bounds
from mrlearn.qmri.ranges import DEFAULT_RANGES, format_ranges

FLAGGED = ("f", "D", "Dstar")


@dataclass
class NetEstimate:
    """``params [V, P]`` (float64, model units), ``outside [V]`` flag codes (None when the training ranges are not
    known) and ``info`` for ``fit.json``; ``warnings``: one line each, for the user."""

    params: torch.Tensor
    outside: np.ndarray | None
    info: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def outside_codes(params: torch.Tensor, names: Sequence[str],
                  ranges: Mapping[str, Sequence[float]]) -> tuple[np.ndarray, dict[str, int]]:
    """Flag codes ``[V]`` (see the module docstring) and the count of flagged voxels per parameter."""
    codes = np.zeros(params.shape[0], dtype=np.uint8)
    counts: dict[str, int] = {}
    p = params.detach().cpu().double().numpy()
    for i, k in enumerate(names):
        if k not in FLAGGED or k not in ranges:
            continue
        lo, hi = (float(v) for v in ranges[k])
        out = (p[:, i] < lo) | (p[:, i] > hi)
        codes[out] |= np.uint8(1 << i)
        counts[k] = int(out.sum())
    return codes, counts


def apply_network(net: torch.nn.Module, meta: dict[str, Any], signals: torch.Tensor) -> NetEstimate:
    """Estimate parameters for ``signals [V, N]`` (normalised) with ``net`` and its metadata (from ``load_network``)."""
    names = tuple(meta["names"])
    scales = torch.tensor(meta["scales"], dtype=torch.float64)
    with torch.no_grad():
        raw = net(signals.float().cpu()).double() * scales
    if meta.get("output_bounds") is not None:
        lo_b, hi_b = (torch.tensor(v, dtype=torch.float64) for v in meta["output_bounds"])
    else:
        pairs = default_bounds(meta["model"], torch.tensor(meta["bvals"], dtype=torch.float64))
        lo_b = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
        hi_b = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    below, above = raw < lo_b, raw > hi_b
    params = torch.minimum(torch.maximum(raw, lo_b), hi_b)
    clamped = {k: int((below[:, i] | above[:, i]).sum()) for i, k in enumerate(names)}
    info: dict[str, Any] = {"output": meta.get("output", "abs"),
                            "output_bounds": {k: [float(a), float(b)] for k, a, b in zip(names, lo_b, hi_b)},
                            "clamped_to_bounds": clamped}
    warnings: list[str] = []
    if meta.get("output", "abs") != "sigmoid" and any(clamped.values()):
        detail = ", ".join(f"{k} {n}" for k, n in clamped.items() if n)
        warnings.append(f"the network's output is unbounded (abs, an older or label-study network): estimates of "
                        f"{detail} voxels were clamped to the physical bounds; retrain with 'mrlearn qmri train' "
                        f"for a bounded output")
    ranges, source = meta.get("ranges"), "network"
    if ranges is None and (meta.get("info") or {}).get("normalised") == "lowest_b":
        ranges, source = DEFAULT_RANGES, "not recorded; the fixed ranges of 'mrlearn qmri train' before they were options"
    outside = None
    if ranges is None:
        info["training_ranges"] = None
        warnings.append("the network does not record its training ranges: voxels outside them are not flagged; "
                        "retrain with 'mrlearn qmri train' to get the check")
    else:
        outside, counts = outside_codes(params, names, ranges)
        n_out = int((outside > 0).sum())
        info["training_ranges"] = {k: [float(v[0]), float(v[1])] for k, v in ranges.items()}
        info["training_ranges_source"] = source
        info["outside_training"] = {"voxels": n_out, **counts, "map": "outside_training.nii.gz"}
        if n_out:
            detail = ", ".join(f"{k} {n}" for k, n in counts.items() if n)
            warnings.append(f"{n_out} of {params.shape[0]} voxels have estimates outside the network's training "
                            f"ranges ({format_ranges({k: ranges[k] for k in FLAGGED if k in ranges})}): {detail}; "
                            "they are extrapolations (outside_training.nii.gz); to cover them, retrain with "
                            "--ranges-from <a qmri fit of these data>")
    return NetEstimate(params, outside, info, warnings)
