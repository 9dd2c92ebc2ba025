"""Choosing a convex block's weight decay ``beta`` on validation PSNR, inside the method.

``layerwise_convex`` with ``betas: [b_1, ..., b_K]`` solves each block once per candidate (largest beta first,
each solve warm-started from the previous solution: a continuation path, so the small betas - the slow ones -
start near their minimiser), installs each candidate block on the frozen earlier blocks and keeps the one whose
network has the highest validation PSNR (ties: the larger beta, the simpler block). The validation PSNR is the
engine's ``val_psnr``: fastMRI PSNR per volume of the magnitude ``|output| * scale`` against the target magnitude
with the target volume's max as peak (:func:`mrlearn.evaluation.metrics.psnr`), mean over volumes.

:class:`ValidationInputs` holds the block input of every validation slice (the output of the blocks already
trained, computed once per stage under ``no_grad``) with its target and scale, on the solving device; every process
of a distributed run scores the whole validation split, so every process picks the same beta. No Lightning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from mrlearn.errors import input_error


def parse_betas(beta: float | None, betas: Sequence[float] | None) -> tuple[float, ...]:
    """The candidates, largest first: ``betas`` (chosen on validation PSNR) or the single ``beta`` (default 1e-4).

    One-line errors: both given, an empty or duplicated list, a negative or non-finite value."""
    if beta is not None and betas is not None:
        raise input_error("method.betas", "is given together with method.beta",
                          "give beta (one value) or betas (candidates chosen on validation PSNR), not both")
    if betas is None:
        values = [1e-4 if beta is None else beta]
        where = "method.beta"
    else:
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or not betas:
            raise input_error("method.betas", f"must be a non-empty list of numbers, got {betas!r}",
                              "e.g. betas: [1.0e-6, 1.0e-5, 1.0e-4, 1.0e-3, 1.0e-2]")
        values, where = list(betas), "method.betas"
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise input_error(where, f"every beta must be a finite number >= 0, got {v!r}", "use e.g. 1e-4")
        out.append(float(v))
    if len(set(out)) != len(out):
        raise input_error(where, f"has repeated values {out}", "list each candidate once")
    return tuple(sorted(out, reverse=True))


@dataclass
class ValidationInputs:
    """Block inputs ``x [S, 2, h, w]``, target magnitudes ``[S, h, w]`` (float64, numpy), scales ``[S]`` and the
    slice keys of the validation split, ordered by (file name, slice)."""

    inputs: torch.Tensor
    targets: np.ndarray
    scales: torch.Tensor
    keys: list[tuple[str, int]]

    @classmethod
    @torch.no_grad()
    def build(cls, dataset: Any, model: Any, stage: int, device: torch.device | str,
              batch_size: int = 8) -> "ValidationInputs":
        """Every sample of ``dataset`` (the method's validation transform) through blocks ``< stage`` of ``model``."""
        samples = [dataset[i] for i in range(len(dataset))]
        if not samples:
            raise input_error("data.val", "the validation split is empty, so method.betas cannot be chosen",
                              "give a validation split or a single method.beta")
        samples.sort(key=lambda s: (str(s["fname"]), int(s["slice"])))
        feats = []
        for i in range(0, len(samples), batch_size):
            x = torch.stack([s["image"] for s in samples[i:i + batch_size]]).to(device)
            feats.append(model.frozen_features(x, stage).float())
        targets = np.stack([s["target"][0].double().numpy() for s in samples])
        scales = torch.tensor([float(s["std"]) for s in samples], dtype=torch.float32, device=device)
        return cls(torch.cat(feats), targets, scales, [(str(s["fname"]), int(s["slice"])) for s in samples])

    @torch.no_grad()
    def psnr(self, block: torch.nn.Module, batch_size: int = 8) -> float:
        """Validation PSNR (dB, mean over volumes) of the network whose next block is ``block``."""
        from mrlearn.evaluation.metrics import psnr
        from mrlearn.physics.complex import channels_to_complex

        outs = []
        for i in range(0, self.inputs.shape[0], batch_size):
            y = block(self.inputs[i:i + batch_size]).float()
            outs.append((channels_to_complex(y).abs() * self.scales[i:i + batch_size, None, None]).double().cpu())
        pred = torch.cat(outs).numpy()
        by_volume: dict[str, list[int]] = {}
        for j, (fname, _) in enumerate(self.keys):
            by_volume.setdefault(fname, []).append(j)
        values = [float(psnr(self.targets[idx], pred[idx], float(self.targets[idx].max())))
                  for idx in by_volume.values()]
        return float(np.mean(values))


def pick_best(candidates: list[dict[str, Any]]) -> int:
    """Index of the candidate with the highest finite ``val_psnr`` (the first such, i.e. the larger beta, on ties);
    0 when none is finite."""
    best, best_value = 0, -math.inf
    for i, c in enumerate(candidates):
        v = float(c.get("val_psnr", math.nan))
        if math.isfinite(v) and v > best_value:
            best, best_value = i, v
    return best
