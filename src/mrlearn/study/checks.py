"""Checks of a study before any run starts: its budget policy holds, its slice counts exist in the data, and every
run's processes can be started on one machine.

* ``budget: equal_steps`` needs every run to have the same ``trainer.max_steps`` (> 0); ``equal_wall_time`` the same
  ``trainer.max_time``; ``equal_samples_per_task`` the same ``tasks.max_samples`` (the samples a task may be
  trained on). Anything else is refused with a one-line error naming the runs that differ.
* A ``slice_count`` (``data.slice_count``, or a task's ``tasks.tasks.<i>.slice_count``) larger than the training
  slices the data hold would silently be cut to what exists (so two grid points could run the same setting):
  such a study is refused, saying how many slices there are and how to change the count or the grid.
* A run on several devices of one machine (``trainer.devices`` > 1: DDP) runs in a child process of the study
  whose Lightning starts the ranks (:mod:`mrlearn.study.ranks`). A run on several machines
  (``trainer.num_nodes`` > 1) is refused: a study starts a run's processes on one machine only, and the other
  machines' ranks would have no launcher.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from mrlearn.errors import MrlearnError, input_error
from mrlearn.study.spec import StudySpec


#: the config key (section, field) each budget policy fixes for every run of a study
BUDGET_KEYS = {"equal_steps": ("trainer", "max_steps"), "equal_wall_time": ("trainer", "max_time"),
               "equal_samples_per_task": ("tasks", "max_samples")}


def check_budget(spec: StudySpec, configs: dict[str, Any]) -> None:
    """Refuse a study whose runs break its declared budget policy."""
    where = f"{spec.path or spec.name}: budget"
    if spec.budget not in BUDGET_KEYS:
        return
    section, key = BUDGET_KEYS[spec.budget]
    name = f"{section}.{key}"
    values = {rid: _get(_section(cfg, section), key) for rid, cfg in configs.items()}
    unset = [rid for rid, v in values.items() if v in (None, -1, 0, "", {})]
    if unset:
        raise input_error(where, f"{spec.budget} but run {unset[0]} has no {name}",
                          f"set {name} for every run (e.g. in the study's set:)")
    distinct = sorted({str(v) for v in values.values()})
    if len(distinct) > 1:
        first = {v: next(r for r, x in values.items() if str(x) == v) for v in distinct}
        raise input_error(where, f"{spec.budget} but {name} differs: " +
                          ", ".join(f"{v} ({r})" for v, r in first.items()), f"give every arm the same {name}")


def _section(cfg: Any, section: str) -> Any:
    """A config section: a dataclass field (``trainer``) or a capability's section in ``cfg.extra``."""
    value = getattr(cfg, section, None)
    return value if value is not None else (getattr(cfg, "extra", {}) or {}).get(section)


def _available_slices(cfg: Any, contrasts: Any, root: Any, cache: dict) -> int | None:
    """Training slices of ``contrasts`` in ``root`` (before any slice subset), or None when unknown."""
    from mrlearn.training.data import split_dataset

    d = cfg.data
    subset = d.volume_fraction < 1 or d.volume_count is not None  # only then does the seed change the volumes
    key = (str(root), d.train, str(contrasts), d.volume_fraction, d.volume_count, cfg.seed if subset else None)
    if key not in cache:
        plain = dataclasses.replace(d, root=root, contrasts=contrasts, slice_count=None, slice_fraction=1.0)
        try:
            cache[key] = len(split_dataset(dataclasses.replace(cfg, data=plain), "train"))
        except (MrlearnError, OSError, ValueError, KeyError, TypeError):
            cache[key] = None  # the run itself reports what is wrong with its data
    return cache[key]


def _counts(cfg: Any) -> list[tuple[str, int, Any, Any]]:
    """``(key, slice_count, contrasts, root)`` for every slice count the config sets."""
    out = []
    if getattr(cfg.data, "slice_count", None):
        out.append(("data.slice_count", int(cfg.data.slice_count), cfg.data.contrasts, cfg.data.root))
    tasks = (getattr(cfg, "extra", {}) or {}).get("tasks")
    items = _get(tasks, "tasks") or []
    for i, task in enumerate(items if isinstance(items, (list, tuple)) else []):
        count = _get(task, "slice_count")
        if isinstance(count, int) and count > 0:
            contrasts = _get(task, "contrasts")
            root = _get(task, "root") or cfg.data.root
            out.append((f"tasks.tasks.{i}.slice_count", count, contrasts if contrasts is not None else cfg.data.contrasts, root))
    return out


def _get(obj: Any, key: str) -> Any:
    """``obj[key]`` of a mapping or ``obj.key`` of a dataclass (config sections come as either)."""
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def check_slice_counts(configs: dict[str, Any], log: Callable[[str], None] = print) -> None:
    """Refuse runs whose slice counts exceed the training slices in their data (headers only are read)."""
    cache: dict = {}
    for rid, cfg in configs.items():
        for key, count, contrasts, root in _counts(cfg):
            if root is None:
                continue  # the embedded dataset: its presets use fractions
            per_contrast = [contrasts] if contrasts is None or isinstance(contrasts, str) else [[c] for c in contrasts]
            for c in per_contrast:
                n = _available_slices(cfg, c, root, cache)
                if n is not None and count > n:
                    label = "" if c is None else f" of {c if isinstance(c, str) else ', '.join(c)}"
                    raise input_error(f"run {rid}: {key}", f"{count} slices asked but the training data hold {n}{label}",
                                      f"lower it (e.g. --set 'grid.{key}=[...]' or --set {key}=N), or add data")


def check_processes(configs: dict[str, Any]) -> None:
    """Refuse runs whose processes a study cannot start: those on several machines (see the module docstring)."""
    for rid, cfg in configs.items():
        nodes = getattr(getattr(cfg, "trainer", None), "num_nodes", 1)
        if int(nodes or 1) > 1:
            raise input_error(f"run {rid}: trainer.num_nodes", f"{nodes} machines, but a study starts a run's "
                              "processes on one machine only", "use trainer.num_nodes=1 with trainer.devices=N (the "
                              "devices of one machine), or train that setting alone with mrlearn train --nodes N "
                              "(docs/howto/multi-node.md)")
