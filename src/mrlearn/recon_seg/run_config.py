"""The ``recon_seg_run`` section: how the study runner ``recon_seg`` trains one arm (registered with
:mod:`mrlearn.config`; the rest of the experiment config is an ordinary ``recon_seg`` experiment).

```yaml
recon_seg_run:
  pipeline: joint          # joint | two_step | zero_filled | target
  seg_early_stopping: {monitor: val_dice, mode: max, patience_samples: 400, min_delta: 0.002, smoothing: ema}
  examples: 1              # test volumes whose middle slice (image and labels) the report shows
```

Pipelines (every one scored on the test split with the fastMRI metrics and the Dice of its labels):

* ``joint``: one joint model (``ynet``, ``unrolled_seg``, ``cross_stitch``, ``sluice``, ``recon_then_seg``) trained
  on both losses; each task keeps its own best checkpoint and plateau rule (reconstruction: ``trainer.early_stopping``
  on ``val_psnr``; segmentation: ``seg_early_stopping`` on ``val_dice``); the run ends when both have stopped.
* ``two_step``: ``recon_then_seg``: the reconstruction network alone (stage ``recon``, ``trainer.early_stopping``),
  then the segmenter on its frozen best reconstructions (stage ``seg``, ``seg_early_stopping``).
* ``zero_filled``: ``recon_then_seg`` whose ``recon`` is the parameter-free ``zero_filled`` model: only a segmenter
  of the zero-filled magnitude is trained (``seg_early_stopping``).
* ``target``: the same segmenter trained, selected and tested on the fully sampled target images (the ceiling).

``seg_early_stopping`` takes the keys of ``trainer.early_stopping`` (:class:`mrlearn.early_stopping.EarlyStoppingConfig`);
its ``monitor`` must be ``val_dice``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mrlearn.config import register_section
from mrlearn.early_stopping import EarlyStoppingConfig, check_early_stopping
from mrlearn.errors import MrlearnError, input_error

WHERE = "recon_seg_run"
PIPELINES = ("joint", "two_step", "zero_filled", "target")
#: the validation metric each task is selected and stopped on
TASK_MONITORS = {"recon": "val_psnr", "seg": "val_dice"}


@dataclass
class ReconSegRunConfig:
    """The ``recon_seg_run`` section (module docstring)."""

    pipeline: str = "joint"
    seg_early_stopping: dict[str, Any] | None = None
    examples: int = 1

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise input_error(f"{WHERE}.pipeline", f"unknown pipeline {self.pipeline!r}", f"choose one of: {', '.join(PIPELINES)}")
        if self.examples < 0:
            raise input_error(f"{WHERE}.examples", f"{self.examples} is negative", "use 0 (none) or more")
        self.seg_stopping()  # validated here, so a bad section fails before any run starts

    def seg_stopping(self) -> EarlyStoppingConfig | None:
        """``seg_early_stopping`` as a validated :class:`EarlyStoppingConfig` (monitor ``val_dice``), or None."""
        return task_stopping(self.seg_early_stopping, "seg", f"{WHERE}.seg_early_stopping")


def task_stopping(raw: Any, task: str, where: str) -> EarlyStoppingConfig | None:
    """A task's plateau rule from a mapping or :class:`EarlyStoppingConfig` (None: none); its monitor must be the
    task's metric (:data:`TASK_MONITORS`; filled in when absent), mode ``max``."""
    if raw is None:
        return None
    if dataclasses.is_dataclass(raw):
        raw = dataclasses.asdict(raw)
    if not isinstance(raw, dict):
        raise input_error(where, f"expected a mapping, got {raw!r}", "e.g. {patience: 5, min_delta: 0.002}")
    names = {f.name for f in dataclasses.fields(EarlyStoppingConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise input_error(f"{where}.{unknown[0]}", "unknown key", f"valid keys: {', '.join(sorted(names))}")
    monitor = TASK_MONITORS[task]
    if raw.get("monitor") not in (None, monitor):
        raise input_error(f"{where}.monitor", f"{raw['monitor']!r}: the {task} task is selected and stopped on {monitor}",
                          f"set monitor: {monitor} or leave it out")
    if raw.get("mode") not in (None, "max"):
        raise input_error(f"{where}.mode", f"{raw['mode']!r}: {monitor} is better when larger", "set mode: max")
    es = EarlyStoppingConfig(**{**raw, "monitor": monitor, "mode": "max"})
    try:
        check_early_stopping(es)
    except MrlearnError as exc:  # its messages name trainer.early_stopping: name this section instead
        raise MrlearnError(str(exc).replace("trainer.early_stopping", where)) from None
    return es


register_section(WHERE, ReconSegRunConfig)
