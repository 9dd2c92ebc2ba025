"""Checks of a study before any run starts: its budget policy holds, its slice counts exist in the data, and every
run trains in one process.

* ``budget: equal_steps`` needs every run to have the same ``trainer.max_steps`` (> 0); ``equal_wall_time`` the same
  ``trainer.max_time``; ``equal_samples_per_task`` the same ``tasks.max_samples`` (the samples a task may be
  trained on). Anything else is refused with a one-line error naming the runs that differ.
* A ``slice_count`` (``data.slice_count``, or a task's ``tasks.tasks.<i>.slice_count``) larger than the training
  slices the data hold would silently be cut to what exists (so two grid points could run the same setting):
  such a study is refused, saying how many slices there are and how to change the count or the grid.
* A run on several devices (``trainer.devices`` > 1 or ``trainer.num_nodes`` > 1: DDP) is refused: Lightning starts
  the other ranks by running the same command again, and their study would skip the run rank 0 holds and train
  another run in the same process group.
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


def _device_count(trainer: Any) -> int:
    """How many processes ``trainer.devices`` starts on one node (``auto`` / -1: every visible GPU on a GPU run)."""
    devices = getattr(trainer, "devices", 1)
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and "," in devices:  # GPU indices, e.g. "0,1"
        return len([d for d in devices.split(",") if d.strip()])
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if devices in ("auto", -1):
        if str(getattr(trainer, "accelerator", "auto")) in ("gpu", "cuda", "auto"):
            import torch

            return torch.cuda.device_count() if torch.cuda.is_available() else 1
        return 1
    return int(devices) if isinstance(devices, int) else 1


def check_single_process(configs: dict[str, Any]) -> None:
    """Refuse runs that would train on several processes (DDP) inside a study (see the module docstring)."""
    for rid, cfg in configs.items():
        trainer = getattr(cfg, "trainer", None)
        n = _device_count(trainer) * max(1, int(getattr(trainer, "num_nodes", 1) or 1))
        if n > 1:
            raise input_error(f"run {rid}: trainer.devices", f"{getattr(trainer, 'devices', None)!r} starts {n} "
                              "processes (DDP), which a study cannot hand the same run",
                              "use trainer.devices=1 and run several at once (--executor local --workers N), or train "
                              "that setting alone with mrlearn train --devices N")
