"""The ``qmri`` section of an experiment config (registered with :mod:`mrlearn.config`).

A study config is an ordinary mrlearn experiment YAML (``name``, ``seed``, ``optim``, ``trainer``, ``out_dir``)
plus a ``qmri:`` section parsed into :class:`QmriConfig`; unknown keys and wrong types are one-line errors.
Units: b-values s/mm^2, D and D* um^2/ms, SNR = S0 / sigma with S0 = 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mrlearn.config import register_section
from mrlearn.errors import input_error
from mrlearn.qmri.ranges import check_ranges

EPSTEIN_BVALS = [0.0, 10.0, 20.0, 30.0, 50.0, 80.0, 100.0, 200.0, 400.0, 800.0]
METHODS = ("mle_fit", "net_gt", "net_mle", "net_ss", "hybrid")


@dataclass
class QmriConfig:
    """Label study settings.

    ``methods``: any of ``mle_fit`` (the per-voxel Rician MLE), ``net_gt`` / ``net_mle`` (supervised with
    groundtruth / MLE labels), ``net_ss`` (self-supervised signal loss), ``hybrid`` (one network per entry of
    ``alphas``); a ``_wide`` suffix on a network method (e.g. ``net_gt_wide``) uses ``wide_factor`` x width.
    ``grid_points`` values per parameter of f, D, D* (S0 = 1) x ``repeats`` noise draws form the test set;
    maps are drawn over ``map_axes`` at the middle value of the third parameter.
    Training (``stop_on``): ``stability`` (default) stops when the network's estimates of the validation signals
    have stayed within ``stability_tol`` (RMS over signals, as a fraction of each parameter's range width, the
    largest over parameters; :mod:`mrlearn.qmri.stability`) of their last move for ``patience`` epochs, and keeps
    the last weights; ``val_loss`` stops on a plateau of the validation loss (no improvement by more than the
    fraction ``min_delta`` of the best for ``patience`` epochs) and keeps the best epoch's weights. With
    ``lr_patience`` the learning rate halves after each ``lr_patience`` such epochs; the trainer's caps apply; with
    ``init_from_gt`` (default, as Epstein et al.) the MLE, self-supervised and hybrid networks start from the
    trained groundtruth-label network. ``batch_size`` is per process: with ``trainer.devices: 2, strategy: ddp``
    the global batch is twice as large (and equals one process's with ``2 x batch_size``). ``fit_bounds``: name -> [low, high] overriding the default fit bounds.
    ``ranges``: the training ranges (uniform), each within the model's physical limits (:mod:`mrlearn.qmri.ranges`).
    """

    model: str = "ivim_additive"
    bvals: list[float] | str = field(default_factory=lambda: list(EPSTEIN_BVALS))
    ranges: dict[str, list[float]] = field(default_factory=lambda: {
        "S0": [0.8, 1.2], "f": [0.1, 0.5], "D": [0.4, 3.0], "Dstar": [10.0, 150.0]})
    fit_bounds: dict[str, list[float]] | None = None
    snrs: list[float] = field(default_factory=lambda: [15.0, 30.0])
    noise: str = "rician"
    n_train: int = 100000
    val_fraction: float = 0.1
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    alphas: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    width: int | None = None
    wide_factor: int = 4
    n_hidden: int = 3
    batch_size: int = 256
    patience: int = 20
    min_delta: float = 0.0
    lr_patience: int | None = None
    stop_on: str = "stability"
    stability_tol: float = 0.005
    init_from_gt: bool = True
    grid_points: int = 5
    repeats: int = 100
    map_axes: list[str] = field(default_factory=lambda: ["f", "Dstar"])
    fit_starts: int = 2
    fit_max_iter: int = 1000  # a safety cap: every voxel of the presets stops on its tolerance (154-655 iterations)

    def __post_init__(self) -> None:
        for m in self.methods:
            base = m[:-5] if m.endswith("_wide") else m
            if base not in METHODS or (m.endswith("_wide") and base == "mle_fit"):
                raise input_error("qmri.methods", f"unknown method {m!r}", f"use {', '.join(METHODS)} (+ '_wide' for networks)")
        if any(not 0 <= a <= 1 for a in self.alphas):
            raise input_error("qmri.alphas", "every alpha must be in [0, 1]", "e.g. [0.25, 0.5, 0.75]")
        if self.model not in ("ivim", "ivim_additive"):
            raise input_error("qmri.model", f"the label study needs an IVIM model, got {self.model!r}",
                              "use 'ivim' or 'ivim_additive'")
        if not isinstance(self.ranges, dict):
            raise input_error("qmri.ranges", "needs a mapping name -> [low, high]", "e.g. {f: [0.1, 0.5], ...}")
        check_ranges(self.ranges, self.model, "qmri.ranges")
        if any(s <= 0 for s in self.snrs) or not self.snrs:
            raise input_error("qmri.snrs", "needs positive SNR values", "e.g. [15, 30]")
        if len(self.map_axes) != 2 or not set(self.map_axes) <= {"f", "D", "Dstar"} or self.map_axes[0] == self.map_axes[1]:
            raise input_error("qmri.map_axes", "needs two different names of f, D, Dstar", "e.g. [f, Dstar]")
        for key in ("n_train", "grid_points", "repeats", "batch_size", "n_hidden", "wide_factor", "fit_starts", "fit_max_iter"):
            if getattr(self, key) < 1:
                raise input_error(f"qmri.{key}", "must be at least 1", "fix the value")
        if self.grid_points < 2:
            raise input_error("qmri.grid_points", "must be at least 2", "e.g. 5")
        if not 0 < self.val_fraction < 1:
            raise input_error("qmri.val_fraction", "must be in (0, 1)", "e.g. 0.1")
        if self.min_delta < 0 or (self.lr_patience is not None and not 1 <= self.lr_patience < self.patience):
            raise input_error("qmri.lr_patience", f"min_delta {self.min_delta}, lr_patience {self.lr_patience}, patience "
                              f"{self.patience}: need min_delta >= 0 and 1 <= lr_patience < patience", "fix the values")
        if self.stop_on not in ("stability", "val_loss"):
            raise input_error("qmri.stop_on", f"unknown rule {self.stop_on!r}", "use stability or val_loss")
        if isinstance(self.stability_tol, bool) or not isinstance(self.stability_tol, (int, float)) or not (
                0 < self.stability_tol < 1):
            raise input_error("qmri.stability_tol", f"must be a fraction of the range width in (0, 1), got "
                              f"{self.stability_tol!r}", "e.g. 0.005")
        if self.fit_bounds is not None:
            for k, v in self.fit_bounds.items():
                if k not in ("S0", "f", "D", "Dstar") or len(v) != 2 or not v[0] < v[1]:
                    raise input_error(f"qmri.fit_bounds.{k}", "needs a parameter name and [low, high], low < high",
                                      "e.g. fit_bounds: {Dstar: [3, 200]}")
        if self.noise not in ("rician", "gaussian"):
            raise input_error("qmri.noise", f"unknown noise {self.noise!r}", "use rician or gaussian")

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict
        return asdict(self)


register_section("qmri", QmriConfig)
