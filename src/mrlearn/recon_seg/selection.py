"""Per-task model selection for a joint reconstruction + segmentation fit, on the engine's mechanism.

:class:`JointSelection` is a Lightning callback handed to :func:`mrlearn.training.runner.train`; when the fit is
set up it puts the engine's :class:`~mrlearn.engine.task_selection.TaskSelection` in place of the run's
``Convergence``, with the two tasks of ``recon_seg`` and each task's own plateau rule:

* ``recon``: ``val_psnr`` (dB), the rule of ``trainer.early_stopping``;
* ``seg``: ``val_dice`` (0..1), the rule of ``recon_seg_run.seg_early_stopping``.

So each task gets ``checkpoints/best_<task>.ckpt`` (its raw metric's best validation), its own stop, and the run
ends when both rules have fired (or at a cap); see :mod:`mrlearn.engine.task_selection` for the shared
learning-rate cuts and what a task's record holds.
"""

from __future__ import annotations

from typing import Any

import lightning as L

from mrlearn.early_stopping import EarlyStoppingConfig
from mrlearn.engine.convergence import Convergence
from mrlearn.engine.task_selection import TaskSelection, use_task_selection

#: task -> the validation metric the ``recon_seg`` method logs for it
MONITORS = {"recon": "val_psnr", "seg": "val_dice"}


def rule(monitor: str, es: EarlyStoppingConfig | None) -> Convergence:
    """The engine's :class:`Convergence` for ``monitor`` (mode max) with the plateau rule ``es`` (None: record only)."""
    if es is None:
        return Convergence(monitor, "max")
    return Convergence(monitor, "max", patience=es.patience, min_delta=es.min_delta, lr_patience=es.lr_patience,
                       lr_factor=es.lr_factor, relative=es.relative, patience_samples=es.patience_samples,
                       smoothing=es.smoothing, smoothing_window=es.smoothing_window, max_lr_cuts=es.max_lr_cuts)


class JointSelection(L.Callback):
    """Installs a :class:`TaskSelection` for ``recon`` and ``seg`` (module docstring); ``stopping``: task -> its
    plateau rule (None: that task is recorded and selected but never stops the run)."""

    def __init__(self, stopping: dict[str, EarlyStoppingConfig | None]):
        super().__init__()
        self.rules = {t: rule(MONITORS[t], stopping.get(t)) for t in MONITORS}
        self.selection: TaskSelection | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.selection is None:
            self.selection = use_task_selection(trainer, dict(MONITORS), self.rules)

    def records(self, run_stopped_by: str | None) -> dict[str, dict[str, Any]]:
        """Each task's record (:meth:`TaskSelection.task_records`)."""
        assert self.selection is not None, "the fit did not start"
        return self.selection.task_records(run_stopped_by)
