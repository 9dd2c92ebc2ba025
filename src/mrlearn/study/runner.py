"""Run a study: every run in its own folder, finished runs skipped, then ``study.csv`` and ``report.html``.

Layout of ``OUT`` (default ``runs/<study name>``)::

    OUT/study.yaml               the study as run (resolved)
    OUT/runs/<run id>/           the run folder of the experiment (config.yaml, run.json, checkpoints, ...)
    OUT/runs/<run id>/result.json   written last (atomic): status, per-group metrics -> the run is finished
    OUT/runs/<run id>/slices.csv    per-slice metrics (group, fname, slice, psnr, ssim, nmse) when the runner gives them
    OUT/runs/<run id>/examples.npz  example images per group (target, input, output) when the runner gives them
    OUT/study.csv, OUT/report.html

Resumable: a run with ``result.json`` is skipped; a run folder without it (killed, failed) is cleared and the
run started again from scratch, so a rerun of a killed study continues where it stopped and gives the same
numbers (every run is seeded). A run that raises stops the study (the error names the run).

Runners (:data:`RUNNERS`, chosen by the study's ``runner``; ``auto``: ``mtl`` when the config has a ``tasks``
section, else ``train``) take the run's ExperimentConfig and return a :class:`RunOutcome`. Later capabilities
add their own with :func:`register_runner`; a runner ``<name>`` not registered yet is looked up by importing
``mrlearn.<name>.study`` (which registers it).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mrlearn.errors import MrlearnError, input_error
from mrlearn.study.spec import RunSpec, StudySpec, run_config
from mrlearn.training.runfiles import atomic_write_bytes, atomic_write_text, write_json

SLICE_FIELDS = ("group", "fname", "slice", "psnr", "ssim", "nmse")


@dataclass
class RunOutcome:
    """What one run reports: metrics per group (task/contrast), optional per-slice rows and example images."""

    groups: dict[str, dict[str, float]]
    slices: list[dict[str, Any]] = field(default_factory=list)
    examples: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


Runner = Callable[[Any], RunOutcome]
RUNNERS: dict[str, Runner] = {}
_LAZY = {"mtl": "mrlearn.mtl.train:study_runner", "train": "mrlearn.study.runner:train_runner",
         "ssl": "mrlearn.ssl.study:study_runner"}


def register_runner(name: str, fn: Runner) -> None:
    """Add a study runner (a callable ``ExperimentConfig -> RunOutcome``)."""
    RUNNERS[name] = fn


def get_runner(name: str, cfg: Any) -> Runner:
    if name == "auto":
        name = "mtl" if "tasks" in getattr(cfg, "extra", {}) else "train"
    if name not in RUNNERS:
        import importlib

        if name in _LAZY:
            module, attr = _LAZY[name].split(":")
            RUNNERS[name] = getattr(importlib.import_module(module), attr)
        elif name.isidentifier():  # convention: mrlearn.<name>.study registers runner <name> on import
            try:
                importlib.import_module(f"mrlearn.{name}.study")
            except ModuleNotFoundError as exc:
                if exc.name is None or not f"mrlearn.{name}.study".startswith(exc.name):
                    raise
    if name not in RUNNERS:
        raise input_error("study: runner", f"unknown runner {name!r}", f"choose one of: auto, {', '.join(sorted(set(_LAZY) | set(RUNNERS)))}")
    return RUNNERS[name]


def train_runner(cfg: Any) -> RunOutcome:
    """The plain ``mrlearn train`` path: validation metrics of the finished run (group ``all``)."""
    from mrlearn.training.runner import train

    result = train(cfg)
    vols = result.volumes
    groups = {"all": {k: float(np.mean([v[k] for v in vols.values()])) for k in ("psnr", "ssim", "nmse")}} if vols else {}
    return RunOutcome(groups=groups)


def is_finished(run_dir: Path) -> bool:
    """True when the run wrote its ``result.json`` with status finished."""
    try:
        return json.loads((run_dir / "result.json").read_text()).get("status") == "finished"
    except (OSError, ValueError):
        return False


def write_outcome(run_dir: Path, run: RunSpec, outcome: RunOutcome, seconds: float) -> None:
    """Write ``slices.csv``, ``examples.npz`` and last ``result.json`` (atomic files)."""
    if outcome.slices:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(SLICE_FIELDS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(outcome.slices)
        atomic_write_text(run_dir / "slices.csv", buf.getvalue())
    if outcome.examples:
        arrays = {f"{g}/{k}": np.asarray(v, dtype=np.float32) for g, d in outcome.examples.items() for k, v in d.items()}
        buf2 = io.BytesIO()
        np.savez_compressed(buf2, **arrays)
        atomic_write_bytes(run_dir / "examples.npz", buf2.getvalue())
    write_json(run_dir / "result.json", {"status": "finished", "run_id": run.run_id, "arm": run.arm, "seed": run.seed,
                                         "point": run.point, "groups": outcome.groups, "seconds": round(seconds, 2),
                                         "extra": outcome.extra})


def read_slices(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "slices.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["slice"] = int(r["slice"])
        for k in ("psnr", "ssim", "nmse"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else float("nan")
    return rows


def run_study(spec: StudySpec, out_dir: str | Path | None = None, log: Callable[[str], None] = print,
              only_summary: bool = False) -> Path:
    """Run every run of ``spec`` not finished yet, then write ``study.csv`` and ``report.html``; returns ``OUT``."""
    from mrlearn.study.summary import write_summary

    out = Path(out_dir) if out_dir else Path("runs") / spec.name
    out.mkdir(parents=True, exist_ok=True)
    runs = spec.runs()
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise MrlearnError(f"{spec.path or spec.name}: two runs get the same id; give the grid values distinct names")
    import yaml

    atomic_write_text(out / "study.yaml", yaml.safe_dump({"name": spec.name, "base": spec.base if isinstance(spec.base, dict) else str(spec.base), "set": spec.set,
                                                          "seeds": spec.seeds, "grid": spec.grid, "arms": spec.arms,
                                                          "runner": spec.runner, "summary": spec.summary}, sort_keys=False))
    configs = {r.run_id: run_config(spec, r, out / "runs" / r.run_id) for r in runs}  # validate all before running any
    for i, run in enumerate(runs, 1):
        run_dir = out / "runs" / run.run_id
        if is_finished(run_dir):
            log(f"[{i}/{len(runs)}] {run.run_id}: finished before, skipped")
            continue
        if only_summary:
            continue
        if run_dir.exists():
            shutil.rmtree(run_dir)
            log(f"[{i}/{len(runs)}] {run.run_id}: unfinished folder cleared, starting again")
        cfg = configs[run.run_id]
        runner = get_runner(spec.runner, cfg)
        log(f"[{i}/{len(runs)}] {run.run_id}: running")
        start = time.time()
        try:
            outcome = runner(cfg)
        except MrlearnError as exc:
            raise MrlearnError(f"study run {run.run_id}: {exc}") from exc
        write_outcome(run_dir, run, outcome, time.time() - start)
        groups = ", ".join(f"{g} PSNR {m.get('psnr', float('nan')):.2f}" for g, m in outcome.groups.items())
        log(f"[{i}/{len(runs)}] {run.run_id}: done in {time.time() - start:.0f} s ({groups})")
    write_summary(spec, out, runs)
    return out
