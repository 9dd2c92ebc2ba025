"""Study YAML -> a list of runs (arms x grid points x seeds), each an experiment config plus overrides.

A study file (safe YAML, :mod:`mrlearn.yamlfile`)::

    name: mtl_contrasts
    base: mtl_tiny            # experiment config: a path (relative to the study file), a shipped name, or inline
    set: [trainer.max_epochs=4]   # overrides for every run (dotted keys; list items by index: tasks.tasks.1.x)
    seeds: [0, 1]
    grid:                     # dotted key -> values; the runs are the Cartesian product
      tasks.tasks.1.slice_fraction: [0.25, 0.5]
    arms:                     # named settings of several keys at once (default: one arm "base")
      stl: {tasks.pooled: false, model.sharing: all}
      mtl_dwa_early: {model.sharing: early, tasks.weighting: {name: dwa}}
    runner: auto              # auto | train | mtl | ... (registry kind "runner"), or "package.module:function"
    budget: equal_steps       # to_convergence | equal_steps | equal_samples_per_task | equal_wall_time
    resources: {cpus: 1, gpus: 0.25}   # what one run needs (local and ray executors; gpus may be fractional)
    stopping_check: {seeds: 1, factor: 2}   # rerun with patience and caps x2 (study.stopping_check; null: off)
    summary:                  # what the report compares (all optional)
      baseline: stl           # arm for the paired per-slice differences
      fraction_key: tasks.tasks.1.slice_fraction   # x axis of the "metric vs fraction" plot
      scarce_task: t2         # task (group) shown in that plot and in its validation curves
      metrics: [psnr, ssim, nmse]   # the report's table (default); a runner's own, e.g. [rmse_Dstar, std_Dstar]
      verdict_metrics: [psnr]       # per-slice metrics compared against the baseline (default psnr); one Holm family

Run ids are ``<arm>[__<key>-<label>...]__seed<k>`` (file-name safe; :func:`value_label`: a scalar or list as
written, a mapping by its values, ``name`` first, e.g. ``mask-random_4_0.08_fixed_per_slice``; long labels are
shortened with a hash); the full overrides of a run are in its ``result.json`` and ``run.json``. Study folders
made before these labels (keys and values of a mapping, sorted: :attr:`RunSpec.legacy_id`) are still found:
:func:`adopt_legacy_ids`. The seed override sets ``seed``.

``--set`` items whose key starts with a study key change the study itself (see :func:`apply_study_override`):
``seeds=[0,1,2]``, ``grid.<dotted key>=[a, b]`` (``null`` drops that axis), ``arms=[stl, mtl_dwa_early]`` (keep
those arms), ``arms.<arm>=<mapping or null>``, ``arms.<arm>.<dotted key>=v``, ``budget=...``, ``resources.gpus=0.5``,
``summary.baseline=...``, ``runner=...``. Every other item overrides every run's experiment config.

Budget policy (``budget``): how the arms' training budgets are made comparable. ``equal_steps`` requires every run
to have the same ``trainer.max_steps``; ``equal_wall_time`` the same ``trainer.max_time``; ``equal_samples_per_task``
the same ``tasks.max_samples`` (checked before any run starts); ``to_convergence`` is recorded. Every run records
``steps`` and, with tasks, ``samples_per_task``. Undeclared: the report says so.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mrlearn.errors import input_error
from mrlearn.study.stopping_check import parse_stopping_check
from mrlearn.yamlfile import read_yaml_file, yaml_load

STUDY_KEYS = ("name", "base", "set", "seeds", "grid", "arms", "runner", "summary", "description", "budget", "resources",
              "stopping_check")
#: study keys a ``--set`` item may change (the rest of ``--set`` goes to every run's config)
SETTABLE = ("seeds", "grid", "arms", "runner", "summary", "budget", "resources", "stopping_check")
BUDGETS = ("to_convergence", "equal_steps", "equal_samples_per_task", "equal_wall_time")
RESOURCE_KEYS = ("cpus", "gpus")
SUMMARY_KEYS = ("baseline", "fraction_key", "scarce_task", "metrics", "examples", "verdict_metrics")


@dataclass
class RunSpec:
    """One run of a study: its id, arm, grid point, seed and the overrides (key -> value) on the base config."""

    run_id: str
    arm: str
    point: dict[str, Any]
    seed: int
    overrides: dict[str, Any]
    legacy_id: str | None = None  # the id earlier versions gave this run, when it differs


@dataclass
class StudySpec:
    """A parsed study file (see the module docstring)."""

    name: str
    base: Path | dict[str, Any]
    path: Path | None = None
    set: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    grid: dict[str, list[Any]] = field(default_factory=dict)
    arms: dict[str, dict[str, Any]] = field(default_factory=lambda: {"base": {}})
    runner: str = "auto"
    summary: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    budget: str | None = None
    resources: dict[str, float] = field(default_factory=dict)
    stopping_check: dict[str, float] | None = None  # study.stopping_check (None: off)

    def runs(self) -> list[RunSpec]:
        """Every run, in the order they are run: seeds, then grid points (product, file order), then arms.

        So a study stopped early has complete arm comparisons for the first seeds and grid points.
        """
        out = []
        keys = list(self.grid)
        labels = {k: axis_labels(self.grid[k]) for k in keys}
        for seed in self.seeds:
            for idx in itertools.product(*(range(len(self.grid[k])) for k in keys)) if keys else [()]:
                point = {k: self.grid[k][i] for k, i in zip(keys, idx)}
                for arm, settings in self.arms.items():
                    parts = [arm] + [f"{_short(k)}-{labels[k][i]}" for k, i in zip(keys, idx)] + [f"seed{seed}"]
                    legacy = [arm] + [f"{_short(k)}-{_token(v)}" for k, v in point.items()] + [f"seed{seed}"]
                    overrides = {**settings, **point, "seed": int(seed)}
                    rid, old = "__".join(parts), "__".join(legacy)
                    out.append(RunSpec(rid, arm, point, int(seed), overrides, old if old != rid else None))
        return out


def _short(key: str) -> str:
    return key.split(".")[-1]


def _token(value: Any) -> str:
    """The label of earlier versions: the value as flow YAML (mapping keys sorted), made file-name safe."""
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


#: labels longer than this are cut and completed by a hash of the value
MAX_LABEL = 32


def _words(value: Any) -> list[str]:
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: kv[0] != "name")  # name first, then as written
        words: list[str] = []
        for key, v in items:
            if isinstance(v, bool):
                words += [str(key)] if v else []  # a switch reads as its name when on
            else:
                words += _words(v)
        return words
    if isinstance(value, (list, tuple)):
        return [w for v in value for w in _words(v)]
    return [_token(value)]


def value_label(value: Any) -> str:
    """A short file-name-safe label of a grid value: scalars and lists as written (``0.25``, ``PDFS``), a mapping
    by its values with ``name`` first and switches that are on by their key (``random_4_0.08_fixed_per_slice``);
    longer than :data:`MAX_LABEL`: cut, plus the first 6 hex digits of a hash of the value."""
    import hashlib
    import json

    label = re.sub(r"[^A-Za-z0-9.+-]+", "_", "_".join(_words(value))).strip("_") or "x"
    if len(label) > MAX_LABEL:
        digest = hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:6]
        label = f"{label[: MAX_LABEL - 7].rstrip('_')}-{digest}"
    return label


def axis_labels(values: list[Any]) -> list[str]:
    """:func:`value_label` of each value of one grid axis; values whose labels coincide keep the longer, unique
    labels of earlier versions."""
    labels = [value_label(v) for v in values]
    return [lab if labels.count(lab) == 1 else _token(v) for lab, v in zip(labels, values)]


def adopt_legacy_ids(runs: list[RunSpec], runs_dir: Path) -> list[RunSpec]:
    """Runs whose folder in ``runs_dir`` has the id of an earlier version (and none of the current id) keep that
    id, so a study folder made before keeps its finished runs (resumed, summarised, compared) as they are."""
    for run in runs:
        if run.legacy_id and not (runs_dir / run.run_id).exists() and (runs_dir / run.legacy_id).is_dir():
            run.run_id, run.legacy_id = run.legacy_id, None
    return runs


def apply_override(raw: dict[str, Any], key: str, value: Any, where: str = "") -> None:
    """Set ``raw[k1][k2]...`` for a dotted ``key``; numeric parts index into lists (``tasks.tasks.1.slice_fraction``)."""
    parts = [p for p in str(key).split(".") if p]
    if not parts:
        raise input_error(where or key, "empty key", "use dotted keys such as model.chans")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise input_error(where or key, f"'{part}' is not an index of a list of {len(node)} item(s)",
                                  "check the key against the base config")
            if last:
                node[int(part)] = copy.deepcopy(value)
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise input_error(where or key, f"cannot set '{part}' inside a {type(node).__name__}", "check the key")
        if last:
            node[part] = copy.deepcopy(value)
        else:
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]


def _check(cond: bool, where: str, what: str, todo: str) -> None:
    if not cond:
        raise input_error(where, what, todo)


def study_from_dict(raw: Any, where: str, base_dir: Path | None = None) -> StudySpec:
    """Validate a raw study dict (as loaded from YAML)."""
    _check(isinstance(raw, dict), where, "the top level must be a mapping", "see configs/mtl_contrasts.yaml")
    unknown = sorted(set(raw) - set(STUDY_KEYS))
    _check(not unknown, f"{where}: {unknown[0] if unknown else ''}", "unknown key", f"valid keys: {', '.join(STUDY_KEYS)}")
    _check(isinstance(raw.get("base"), (str, dict)), f"{where}: base", "missing, or neither a string nor a mapping",
           "name the experiment config the study varies (a path or a shipped config name), or write it inline")
    base: Path | dict = raw["base"] if isinstance(raw["base"], dict) else Path(raw["base"])
    if isinstance(base, Path) and base_dir is not None and not base.is_absolute() and (base_dir / base).is_file():
        base = base_dir / base
    sets = raw.get("set") or []
    _check(isinstance(sets, list) and all(isinstance(s, str) and "=" in s for s in sets), f"{where}: set",
           "expected a list of key=value strings", "e.g. [trainer.max_epochs=2]")
    seeds = raw.get("seeds", [0])
    _check(isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds),
           f"{where}: seeds", f"expected a non-empty list of integers, got {seeds!r}", "e.g. [0, 1, 2]")
    _check(len(set(seeds)) == len(seeds), f"{where}: seeds", "repeated seed", "list each seed once")
    grid = raw.get("grid") or {}
    _check(isinstance(grid, dict) and all(isinstance(v, list) and v for v in grid.values()), f"{where}: grid",
           "expected a mapping of dotted keys to non-empty lists", "e.g. grid: {tasks.tasks.1.slice_fraction: [0.25, 0.5]}")
    arms = raw.get("arms") or {"base": {}}
    _check(isinstance(arms, dict) and all(isinstance(v, dict) or v is None for v in arms.values()), f"{where}: arms",
           "expected a mapping of arm names to mappings of dotted keys", "e.g. arms: {stl: {model.sharing: all}}")
    for arm in arms:
        _check(bool(re.fullmatch(r"[A-Za-z0-9_.+-]+", str(arm))), f"{where}: arms.{arm}", "arm names may hold only "
               "letters, digits and _ . + -", "rename the arm")
    arms = {str(k): dict(v or {}) for k, v in arms.items()}
    runner = raw.get("runner", "auto")
    _check(isinstance(runner, str), f"{where}: runner", "expected a string", "auto, mtl or train")
    summary = raw.get("summary") or {}
    _check(isinstance(summary, dict), f"{where}: summary", "expected a mapping", "see configs/mtl_contrasts.yaml")
    bad = sorted(set(summary) - set(SUMMARY_KEYS))
    _check(not bad, f"{where}: summary.{bad[0] if bad else ''}", "unknown key", f"valid keys: {', '.join(SUMMARY_KEYS)}")
    if summary.get("baseline") is not None:
        _check(summary["baseline"] in arms, f"{where}: summary.baseline", f"arm {summary['baseline']!r} is not in arms",
               f"choose one of: {', '.join(arms)}, or --set summary.baseline=null for no paired differences")
    vm = summary.get("verdict_metrics")
    _check(vm is None or (isinstance(vm, list) and vm and all(isinstance(m, str) and m for m in vm)
                          and len(set(vm)) == len(vm)), f"{where}: summary.verdict_metrics",
           f"expected a non-empty list of distinct metric names, got {vm!r}", "e.g. [psnr, dice]")
    budget = raw.get("budget")
    _check(budget is None or budget in BUDGETS, f"{where}: budget", f"unknown budget policy {budget!r}",
           f"choose one of: {', '.join(BUDGETS)}")
    resources = raw.get("resources") or {}
    _check(isinstance(resources, dict) and set(resources) <= set(RESOURCE_KEYS), f"{where}: resources",
           f"expected a mapping with keys {', '.join(RESOURCE_KEYS)}", "e.g. resources: {cpus: 2, gpus: 0.5}")
    for key, value in resources.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        _check(ok and (key != "cpus" or value > 0), f"{where}: resources.{key}", f"expected a number >= 0, got {value!r}",
               "e.g. cpus: 1, gpus: 0.25 (a quarter of a GPU)")
    name = str(raw.get("name") or (Path(where).stem if where else "study"))
    _check(bool(re.fullmatch(r"[A-Za-z0-9_.+-]+", name)) and name not in (".", ".."), f"{where}: name",
           f"{name!r} is not a plain name (it names the study folder runs/<name>)", "use letters, digits and _ . + -")
    return StudySpec(name=name, base=base, set=list(sets), seeds=[int(s) for s in seeds],
                     grid={str(k): list(v) for k, v in grid.items()}, arms=arms, runner=runner, summary=dict(summary),
                     description=str(raw.get("description") or ""), budget=budget,
                     resources={k: float(v) for k, v in resources.items()},
                     stopping_check=parse_stopping_check(raw.get("stopping_check", ...), budget, where))


def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML; floats such as ``1e-4`` (which YAML 1.1 reads as text) become numbers."""
    try:
        value = yaml_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise input_error(f"--set {text}", "not valid YAML", "quote it or fix the syntax") from exc
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()):
        return float(value)
    return value


def _drop_or_set(node: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        node.pop(key, None)
    else:
        node[key] = value


def apply_study_override(raw: dict[str, Any], item: str) -> bool:
    """Apply one ``--set`` item to the raw study when its key is a study key; False when it is a run override."""
    key, sep, text = item.partition("=")
    head, _, rest = key.strip().partition(".")
    if not sep or head not in SETTABLE:
        return False
    value = parse_value(text)
    where = f"--set {item}"
    if not rest:
        if head == "arms" and isinstance(value, list):  # keep these arms, in this order
            arms = raw.get("arms") or {"base": {}}
            missing = [a for a in value if a not in arms]
            _check(not missing, where, f"no arm {missing[0] if missing else ''!r}", f"arms: {', '.join(arms)}")
            raw["arms"] = {a: arms[a] for a in value}
        else:
            raw[head] = value
        return True
    if head in ("grid", "resources", "summary", "stopping_check"):
        _check(raw.get(head) is None or isinstance(raw.get(head), dict), where, f"{head} is not a mapping", "check it")
        if raw.get(head) is None:
            raw[head] = {}
        _drop_or_set(raw[head], rest, value)
        return True
    if head == "arms":
        arms = raw.get("arms") or {"base": {}}
        raw["arms"] = arms
        names = sorted((a for a in arms if rest == a or rest.startswith(a + ".")), key=len, reverse=True)
        if not names or names[0] == rest:
            _drop_or_set(arms, rest, value)
        else:
            arm = arms[names[0]] if isinstance(arms[names[0]], dict) else {}
            arms[names[0]] = arm
            _drop_or_set(arm, rest[len(names[0]) + 1:], value)
        return True
    raise input_error(where, f"{head} takes no sub-key", f"write --set {head}=VALUE")


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read a study YAML (a path or a shipped config name); ``overrides`` (``key=value``) go to every run's config."""
    from mrlearn.config import resolve_config_path

    p = resolve_config_path(path)
    raw = read_yaml_file(p)
    if raw is None:
        raise input_error(p, "the study file is empty", "see configs/mtl_contrasts.yaml for what a study holds")
    if isinstance(raw, dict) and "base" not in raw and ("model" in raw or "method" in raw):
        raw = {"name": raw.get("name") or p.stem, "base": str(p)}  # an experiment config: a study of one run
    run_sets = [item for item in overrides if not (isinstance(raw, dict) and apply_study_override(raw, item))]
    spec = study_from_dict(raw, str(p), p.parent)
    spec.path = p
    spec.set = spec.set + run_sets
    return spec


def run_config(spec: StudySpec, run: RunSpec, run_dir: Path):
    """The validated :class:`~mrlearn.config.ExperimentConfig` of one run (base + set + arm/grid/seed + out_dir), its
    paths absolute against the current directory (:mod:`mrlearn.study.paths`)."""
    from mrlearn.config import config_from_dict, resolve_config_path, set_override
    from mrlearn.study.paths import absolute_paths

    if isinstance(spec.base, dict):
        raw, where = copy.deepcopy(spec.base), f"{spec.path or spec.name}: base"
    else:
        base = resolve_config_path(spec.base)
        where = str(base)
        raw = read_yaml_file(base)
        if raw is None:
            raise input_error(base, "the base config is empty", "write the experiment's sections into it")
    for item in spec.set:
        key, _, text = item.partition("=")
        if any(part.isdigit() for part in key.split(".")):
            apply_override(raw, key, parse_value(text), f"--set {item}")
        else:
            set_override(raw, item)
    for key, value in run.overrides.items():
        apply_override(raw, key, value, f"{spec.name}: {run.arm}: {key}")
    raw["out_dir"] = str(run_dir)
    raw["name"] = f"{spec.name}/{run.run_id}"
    absolute_paths(raw)  # resolved here, where the study starts: a worker elsewhere runs in another directory
    return config_from_dict(raw, where=where)
