"""Stopping a parameter network on the stability of its estimates, not on its loss.

A network trained on a loss that barely depends on a parameter (D* in IVIM: the signal changes little with it)
reaches a plateau of its validation loss while that parameter's estimates still drift; stopping there leaves them
where the drift happened to be (the label study saw the self-supervised D* |bias| move by several seed SDs when the
loss patience was doubled). So the stopping quantity is the estimates themselves, on a fixed validation set:

  change_t = max over parameters k of  RMS_v( (theta_t[v, k] - theta_anchor[v, k]) / width_k )

with ``theta_t [V, P]`` the network's estimates (physical units) at validation ``t``, ``width_k`` the width of
parameter k's training range, and the *anchor* the estimates at the last validation that moved: when
``change_t > tol`` the estimates have moved (the anchor becomes ``theta_t`` and ``moves`` grows by one), else they
stay within ``tol`` of the anchor. The anchor, not the previous validation, is the reference so that a slow drift
(many small steps, each below ``tol``) still adds up to a move, while jitter around a fixed point smaller than
``tol`` never does. The maximum over parameters keeps one drifting parameter from hiding behind settled ones.

``moves`` is the monitored series of early stopping (:class:`mrlearn.engine.convergence.Convergence`, mode
``max``, min_delta 0): an "improvement" is a move, so the run stops after ``patience`` validations in which the
estimates stayed within ``tol`` of the anchor (with ``lr_patience``, the rate is cut after each such window and
the run stops only after a full window at its final rate). No Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

#: the monitored metric (mode max): how many validations moved the estimates by more than ``tol``
MONITOR = "val_estimate_moves"
#: logged beside it: ``change_t`` of the module docstring
CHANGE = "val_estimate_change"


def relative_change(new: torch.Tensor, old: torch.Tensor, widths: torch.Tensor) -> tuple[float, list[float]]:
    """``(max_k, per k)`` of the RMS over rows of ``(new - old) / widths``; ``new``, ``old`` ``[V, P]``, ``widths [P]``."""
    if new.shape != old.shape or new.ndim != 2 or widths.shape != (new.shape[1],):
        raise ValueError(f"shapes {tuple(new.shape)}, {tuple(old.shape)} and widths {tuple(widths.shape)} do not match")
    diff = (new.double() - old.double()) / widths.double().to(new.device)
    per = torch.sqrt((diff ** 2).mean(0))
    per = torch.where(torch.isfinite(per), per, torch.full_like(per, float("inf")))  # NaN estimates: never settled
    return float(per.max()), [float(v) for v in per]


@dataclass
class EstimateStability:
    """The anchor rule of the module docstring. ``push(estimates)`` returns ``(moves, change)``."""

    widths: torch.Tensor
    tol: float
    moves: int = 0
    anchor: torch.Tensor | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.widths = torch.as_tensor(self.widths, dtype=torch.float64).cpu()
        if not float(self.tol) > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if not bool((self.widths > 0).all()):
            raise ValueError("every parameter width must be > 0")

    def push(self, estimates: torch.Tensor) -> tuple[int, float]:
        est = estimates.detach().double().cpu()
        if self.anchor is None:  # the first validation: the first anchor (counted as a move)
            change, per = float("inf"), [float("inf")] * int(est.shape[1])
        else:
            change, per = relative_change(est, self.anchor, self.widths)
        if change > self.tol:
            self.anchor, self.moves = est.clone(), self.moves + 1
        self.history.append({"moves": self.moves, "change": change, "per_parameter": per})
        return self.moves, change

    def state_dict(self) -> dict[str, Any]:
        return {"moves": self.moves, "anchor": self.anchor, "history": list(self.history), "tol": float(self.tol)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.moves = int(state.get("moves", 0))
        self.anchor = state.get("anchor")
        self.history = list(state.get("history", []))
