"""The ``tasks`` config section (registered with ``config.register_section``): tasks, data strategy, weighting.

::

    tasks:
      tasks:                     # one entry per task; each is a dataset of the experiment's data.root
        - {name: pd, contrasts: [PD]}
        - {name: t2, contrasts: [T2], slice_fraction: 0.25}   # the scarce task: a seeded, nested subset
      strategy: shuffled         # shuffled | stratified | accumulate
      ratio: [1, 1]              # stratified: samples of each task per batch, proportional (batch_size in total)
      weighting: {name: dwa, temperature: 2.0}   # equal | fixed | inverse | dwa | uncertainty | mgda | gradnorm | pcgrad | cagrad
      pooled: false              # true: one model task for all samples (single-task on pooled contrasts)
      transfer: null             # {pretrain_fraction: 0.5}: pretrain on all tasks but the last, fine-tune on the last;
                                 # phase_caps: split (the budget B split by the fraction) | each (B per phase)
      separate: false            # true: one single-task model per task (the single-task baseline), same steps each
      max_samples: null          # {scarce: 480}: training ends once a listed task has seen that many samples
      eval_split: test           # split of the final per-task evaluation (study runs)
      examples: 1                # example slices per task kept for the report

Each task's ``root`` (default ``data.root``), ``contrasts``, and subset keys (``volume_fraction``,
``volume_count``, ``slice_fraction``, ``slice_count``) override the ``data`` section for that task's training
split; validation and test use the task's whole split.

``max_samples`` is a cap like ``trainer.max_steps``, counted in training samples of a task (all processes): the fit
ends after the step in which any listed task reaches its count (``stopped_by: max_samples``), so a task sees at most
one batch more than its cap. It applies in every model that trains the task (a single-task model, a transfer phase);
``budget: equal_samples_per_task`` requires the same caps in every run of a study.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from mrlearn.config import check_type, register_section
from mrlearn.errors import input_error

TASK_KEYS: dict[str, Any] = {"name": str, "root": str | None, "contrasts": list[str] | None, "volume_fraction": float,
                             "volume_count": int | None, "slice_fraction": float, "slice_count": int | None}


@dataclass
class TaskSpec:
    """One task: a name and where its slices come from."""

    name: str
    root: str | None = None
    contrasts: list[str] | None = None
    volume_fraction: float = 1.0
    volume_count: int | None = None
    slice_fraction: float = 1.0
    slice_count: int | None = None


def parse_task(raw: Any, where: str) -> TaskSpec:
    if not isinstance(raw, dict):
        raise input_error(where, f"expected a mapping, got {raw!r}", "write a task as {name: pd, contrasts: [PD]}")
    for key, value in raw.items():
        if key not in TASK_KEYS:
            raise input_error(f"{where}.{key}", "unknown key", f"valid keys: {', '.join(TASK_KEYS)}")
        check_type(value, TASK_KEYS[key], f"{where}.{key}")
    if "name" not in raw:
        raise input_error(where, "needs a 'name'", "e.g. name: t2")
    spec = TaskSpec(**raw)
    for key in ("volume_fraction", "slice_fraction"):
        if not 0 < getattr(spec, key) <= 1:
            raise input_error(f"{where}.{key}", f"must be in (0, 1], got {getattr(spec, key)}", "e.g. 0.25")
    for key in ("volume_count", "slice_count"):
        if getattr(spec, key) is not None and getattr(spec, key) < 1:
            raise input_error(f"{where}.{key}", "must be at least 1", "fix the value")
    return spec


@dataclass
class TasksConfig:
    """The ``tasks`` section (see the module docstring)."""

    tasks: list[dict[str, Any]] = field(default_factory=list)
    strategy: Literal["shuffled", "stratified", "accumulate"] = "shuffled"
    ratio: list[float] | None = None
    weighting: Any = "equal"
    pooled: bool = False
    transfer: dict[str, Any] | None = None
    separate: bool = False
    max_samples: dict[str, int] | None = None
    eval_split: Literal["val", "test"] = "test"
    examples: int = 1

    def __post_init__(self) -> None:
        if not self.tasks:
            raise input_error("tasks.tasks", "no tasks", "list at least one task, e.g. [{name: pd, contrasts: [PD]}]")
        self.specs = [parse_task(t, f"tasks.tasks.{i}") for i, t in enumerate(self.tasks)]
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise input_error("tasks.tasks", f"task names repeat: {names}", "give every task its own name")
        if self.ratio is not None and (len(self.ratio) != len(self.specs) or min(self.ratio) <= 0):
            raise input_error("tasks.ratio", f"needs {len(self.specs)} positive numbers, got {self.ratio}", "e.g. [1, 1]")
        from mrlearn import registry

        if not isinstance(self.weighting, (str, dict)):
            raise input_error("tasks.weighting", f"expected a name or a mapping, got {self.weighting!r}", "e.g. {name: dwa}")
        registry.validate("weighting", self.weighting, "tasks.weighting", runtime=("num_tasks", "sizes"))
        if self.transfer is not None:
            bad = sorted(set(self.transfer) - {"pretrain_fraction", "phase_caps"})
            if bad:
                raise input_error(f"tasks.transfer.{bad[0]}", "unknown key", "valid keys: pretrain_fraction, phase_caps")
            if self.transfer.get("phase_caps", "split") not in ("split", "each"):
                raise input_error("tasks.transfer.phase_caps", f"{self.transfer['phase_caps']!r} is not split or each",
                                  "split: equal total steps; each: every phase to convergence under the full cap")
            frac = self.transfer.get("pretrain_fraction", 0.5)
            check_type(frac, float, "tasks.transfer.pretrain_fraction")
            if not 0 < frac < 1:
                raise input_error("tasks.transfer.pretrain_fraction", f"must be in (0, 1), got {frac}", "e.g. 0.5")
            if len(self.specs) < 2:
                raise input_error("tasks.transfer", "needs at least two tasks (pretrain on the first ones, fine-tune on the last)",
                                  "list the abundant task(s) first and the scarce task last")
        if self.separate and (self.pooled or self.transfer is not None):
            raise input_error("tasks.separate", "cannot be combined with pooled or transfer", "choose one baseline")
        if self.examples < 0:
            raise input_error("tasks.examples", "must be >= 0", "fix the value")
        for name, count in (self.max_samples or {}).items():
            if name not in self.names:
                raise input_error(f"tasks.max_samples.{name}", "is not a task of this run",
                                  f"use the task names: {', '.join(self.names)}")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise input_error(f"tasks.max_samples.{name}", f"must be a positive number of samples, got {count!r}",
                                  "e.g. 480")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]


def tasks_config(cfg: Any) -> TasksConfig:
    """The ``tasks`` section of an experiment config (a one-line error when it has none)."""
    section = getattr(cfg, "extra", {}).get("tasks")
    if section is None:
        raise input_error("tasks", "the multi-task method needs a 'tasks' section", "see configs/mtl_tiny.yaml")
    return typing.cast(TasksConfig, section)


register_section("tasks", TasksConfig)
