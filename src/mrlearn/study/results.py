"""What one study run leaves in its folder, and how it is read back.

``OUT/runs/<run id>/``:
  ``result.json``   written last (atomic): status ``finished``, run id, arm, seed, grid point, per-group metrics,
                    seconds, the convergence record per group and anything else the runner reports (``extra``);
  ``slices.csv``    per-slice metrics (group, fname, slice, psnr, ssim, nmse, subject, then any other numeric
                    per-slice metric the runner gives, e.g. ``dice``) when the runner gives them; ``subject`` is the
                    file's ``patient_id`` (``study.subjects``; empty: the subject is the file);
  ``examples.npz``  example images per group (``<group>/target``, ``<group>/input``, ``<group>/output``).

Convergence record (the engine writes it into each trained run's ``metrics.json``): ``steps`` (optimiser steps
taken), ``best_step`` (step of the checkpoint used for evaluation), ``stopped_by`` (``early_stopping``,
``max_steps``, ``max_epochs``, ``max_time``) and ``converged`` (False when a cap stopped the run while its
validation metric was still improving), with ``monitor`` (the validation metric) and ``best_score`` (its value at
``best_step``: what model selection compares, e.g. one hyper-parameter arm against another). A runner may also return it in ``RunOutcome.extra["convergence"]``, for
all groups or per group (multi-task runs: each task's own selection, with ``samples_at_best``, the samples of that
task seen at its best validation, and ``samples_per_task``). Missing fields are read as empty (None).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrlearn.io import atomic_write_bytes, atomic_write_text, read_json, write_json

SLICE_FIELDS = ("group", "fname", "slice", "psnr", "ssim", "nmse", "subject")
#: the columns of ``slices.csv`` that name a slice; every other column is a metric
SLICE_IDS = ("group", "fname", "slice", "subject")


def slice_fields(rows: list[dict[str, Any]]) -> list[str]:
    """:data:`SLICE_FIELDS`, then the other numeric per-slice metrics found in ``rows`` (sorted)."""
    extra = sorted({k for r in rows for k, v in r.items() if k not in SLICE_FIELDS and not k.endswith("_noiseless")
                    and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return [*SLICE_FIELDS, *extra]
CONVERGENCE_FIELDS = ("steps", "best_step", "stopped_by", "converged", "monitor", "best_score")


@dataclass
class RunOutcome:
    """What one run reports: metrics per group (task/contrast), optional per-slice rows and example images."""

    groups: dict[str, dict[str, float]]
    slices: list[dict[str, Any]] = field(default_factory=list)
    examples: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def is_finished(run_dir: Path) -> bool:
    """True when the run wrote its ``result.json`` with status finished."""
    return (read_json(Path(run_dir) / "result.json") or {}).get("status") == "finished"


def _record(source: Any) -> dict[str, Any] | None:
    """The convergence fields found in a mapping (top level or under ``convergence``), or None."""
    if not isinstance(source, dict):
        return None
    if isinstance(source.get("convergence"), dict) and any(k in source["convergence"] for k in CONVERGENCE_FIELDS):
        source = source["convergence"]
    if not any(k in source for k in CONVERGENCE_FIELDS):
        return None
    rec = {k: source.get(k) for k in CONVERGENCE_FIELDS}
    for key in ("samples_per_task", "samples_at_best"):  # runs with tasks: samples seen, per task / at the best
        if key in source:
            rec[key] = source[key]
    return rec


def merge_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One record for several trained models (e.g. one per task): converged only if all did; the largest steps."""
    if len(records) == 1:
        return dict(records[0])
    conv = [r.get("converged") for r in records]
    steps = [r["steps"] for r in records if isinstance(r.get("steps"), (int, float))]
    monitors = {r.get("monitor") for r in records}
    return {"steps": max(steps) if steps else None, "best_step": None,
            "stopped_by": "+".join(sorted({str(r.get("stopped_by")) for r in records if r.get("stopped_by")})) or None,
            "converged": False if False in conv else (None if None in conv else True),
            "monitor": monitors.pop() if len(monitors) == 1 else None, "best_score": None}


def convergence(run_dir: Path, outcome: RunOutcome) -> dict[str, dict[str, Any]]:
    """Per group: the convergence record of the model(s) that produced it (empty fields when nothing recorded).

    Sources, first found wins: ``outcome.extra["convergence"]`` (one record, or ``{group: record}``); the run
    folder's ``metrics.json``; ``<sub folder named like the group>/metrics.json``; every ``*/metrics.json`` merged.
    """
    groups = list(outcome.groups)
    given = outcome.extra.get("convergence")
    if isinstance(given, dict) and given and all(isinstance(v, dict) for v in given.values()) and set(given) & set(groups):
        return {g: _record(given.get(g)) or dict.fromkeys(CONVERGENCE_FIELDS) for g in groups}
    own = _record(given) or _record(read_json(run_dir / "metrics.json"))
    if own is not None:
        return {g: dict(own) for g in groups}
    subs = {p.parent.name: _record(read_json(p)) for p in sorted(run_dir.glob("*/metrics.json"))}
    subs = {k: v for k, v in subs.items() if v is not None}
    out = {}
    for g in groups:
        if g in subs:
            out[g] = subs[g]
        elif subs:
            out[g] = merge_records(list(subs.values()))
        else:
            out[g] = dict.fromkeys(CONVERGENCE_FIELDS)
    return out


def write_outcome(run_dir: Path, run: Any, outcome: RunOutcome, seconds: float, config: str | None = None) -> None:
    """Write ``slices.csv``, ``examples.npz`` and last ``result.json`` (atomic files; ``config``: the resolved config
    the run was given, as YAML, kept so a later study can tell whether it asks for the same run). ``result.json``
    and the run's ``run.json`` (when its runner wrote one) name the study run: id, arm, seed, grid point and every
    override it applied to the base config."""
    if outcome.slices:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=slice_fields(outcome.slices), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(outcome.slices)
        atomic_write_text(run_dir / "slices.csv", buf.getvalue())
    if outcome.examples:
        arrays = {f"{g}/{k}": np.asarray(v, dtype=np.float32) for g, d in outcome.examples.items() for k, v in d.items()}
        buf2 = io.BytesIO()
        np.savez_compressed(buf2, **arrays)
        atomic_write_bytes(run_dir / "examples.npz", buf2.getvalue())
    extra = {k: v for k, v in outcome.extra.items() if k != "convergence"}
    study_run = {"run_id": run.run_id, "arm": run.arm, "seed": run.seed, "point": run.point,
                 "overrides": getattr(run, "overrides", None)}
    info = read_json(run_dir / "run.json")
    if info is not None:  # the engine's run record says which study run (and all its overrides) it was
        write_json(run_dir / "run.json", {**info, "study_run": study_run})
    write_json(run_dir / "result.json", {"status": "finished", **study_run, "groups": outcome.groups,
                                         "seconds": round(seconds, 2), "convergence": convergence(run_dir, outcome),
                                         "extra": extra, "config": config})


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The finished run's ``result.json`` or None."""
    data = read_json(Path(run_dir) / "result.json")
    return data if data and data.get("status") == "finished" else None


def read_slices(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of ``slices.csv`` (slice as int, metrics as float, NaN when empty; ``subject`` the file name where the
    run recorded none); [] without the file."""
    path = Path(run_dir) / "slices.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["slice"] = int(r["slice"])
        r["subject"] = r.get("subject") or r["fname"]
        for k in [k for k in r if k not in SLICE_IDS]:  # psnr, ssim, nmse and a runner's own (e.g. dice)
            r[k] = float(r[k]) if r.get(k) not in (None, "") else float("nan")
        for k in ("psnr", "ssim", "nmse"):
            r.setdefault(k, float("nan"))
    return rows


def result_json(obj: Any) -> str:
    """Compact JSON of a small value (grid values in CSV cells)."""
    return json.dumps(obj, sort_keys=True)
