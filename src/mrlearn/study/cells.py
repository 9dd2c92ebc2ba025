"""``cells.csv``: one number per (run, group, metric, subject) - what every study interval and verdict is computed from.

A cell is the mean over one subject's scored slices of one metric (``psnr``, ``ssim``, ``nmse``; fastMRI
conventions, per slice with the volume's peak; and any other per-slice metric of ``slices.csv``, e.g. ``dice``) in
one run (arm, grid point, seed) and group. Columns::

    run_id, arm, <grid keys>, seed, group, metric, subject, value, slices

``slices`` is the number of slices averaged (NaN slice values are left out). Cells come from each finished run's
``slices.csv``; a run whose ``slices.csv`` is gone (e.g. a committed study in ``docs/results/<study>/``, where only
``study.csv`` and ``cells.csv`` are kept) keeps the cells the previous ``cells.csv`` holds for its run id, so
``mrlearn study --summary-only`` recomputes the same intervals and verdicts. Values are written with Python's
shortest round-trip float format, so a rewrite from ``cells.csv`` is byte-identical.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mrlearn.study.results import read_slices
from mrlearn.study.spec import RunSpec

CELLS_FILE = "cells.csv"
SLICE_METRICS = ("psnr", "ssim", "nmse")


def csv_point(run: RunSpec) -> dict[str, Any]:
    """The run's grid point as CSV columns (``study.csv`` and ``cells.csv``): scalars as they are, others as JSON."""
    return {k: v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in run.point.items()}


def run_cells(run: RunSpec, slices: list[dict[str, Any]],
              metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The cells of one run from its per-slice rows (``study.results.read_slices``); ``metrics``: default
    :data:`SLICE_METRICS` and every other numeric metric column of the rows."""
    if metrics is None:
        from mrlearn.study.results import SLICE_IDS

        found = {k for r in slices for k, v in r.items() if k not in SLICE_IDS and not k.endswith("_noiseless")
                 and isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics = [*SLICE_METRICS, *sorted(found - set(SLICE_METRICS))]
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in slices:
        for m in metrics:
            x = r.get(m)
            if isinstance(x, (int, float)) and x == x:
                values[(r["group"], m, r.get("subject") or r["fname"])].append(float(x))
    point = csv_point(run)
    return [{"run_id": run.run_id, "arm": run.arm, **point, "seed": run.seed, "group": g, "metric": m, "subject": s,
             "value": float(np.mean(v)), "slices": len(v)}
            for (g, m, s), v in sorted(values.items())]


def read_cells(path: Path) -> dict[str, list[dict[str, Any]]]:
    """``run_id -> cell rows`` of a ``cells.csv`` ({} without the file); value as float, slices as int."""
    if not Path(path).is_file():
        return {}
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            r["value"] = float(r["value"]) if r.get("value") not in (None, "") else math.nan
            r["slices"] = int(r["slices"]) if r.get("slices") not in (None, "") else 0
            out[r["run_id"]].append(r)
    return dict(out)


def study_cells(out: Path, runs: list[RunSpec], finished: set[str]) -> list[dict[str, Any]]:
    """Cells of the ``finished`` runs: from ``slices.csv`` where the run folder has it, else from the study's
    previous ``cells.csv`` (typed arm, grid point and seed from the run's spec)."""
    previous: dict[str, list[dict[str, Any]]] | None = None
    rows: list[dict[str, Any]] = []
    for run in runs:
        if run.run_id not in finished:
            continue
        slices = read_slices(out / "runs" / run.run_id)
        if slices:
            rows.extend(run_cells(run, slices))
            continue
        if previous is None:
            previous = read_cells(out / CELLS_FILE)
        point = csv_point(run)
        for r in previous.get(run.run_id, []):
            rows.append({"run_id": run.run_id, "arm": run.arm, **point, "seed": run.seed, "group": r["group"],
                         "metric": r["metric"], "subject": r["subject"], "value": r["value"], "slices": r["slices"]})
    return rows


def cell_index(cells: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[tuple[int, str], tuple[float, int]]]:
    """``(run_id, group, metric) -> {(seed, subject): (value, slices)}``."""
    index: dict[tuple[str, str, str], dict[tuple[int, str], tuple[float, int]]] = defaultdict(dict)
    for c in cells:
        index[(c["run_id"], c["group"], c["metric"])][(int(c["seed"]), str(c["subject"]))] = (c["value"], c["slices"])
    return dict(index)
