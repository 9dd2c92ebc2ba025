"""The study report's two statistical tables, computed from the cells (``study.cells``) and ``study.csv`` rows.

* :func:`aggregate` - per (arm, grid point, group): mean and sample std over seeds of each metric, and the PSNR
  interval over seeds x subjects (``study.stats.crossed_interval`` on the arm's own cells);
* :func:`paired_differences` - every arm against the baseline arm, per grid point and group: the cell differences
  ``D[seed, subject] = cell(arm) - cell(baseline)`` (same grid point, seed, group and subject; a pair whose slice
  counts differ is a missing cell), their mean and unadjusted 95 % interval, the t test's df and p, and the
  Holm-adjusted p over the study's family (every comparison whose verdict is not blocked by the rules of
  ``study.stats``, of every compared metric: ``summary.verdict_metrics``, default PSNR), with the verdict from the
  adjusted p.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any, Sequence

from mrlearn.evaluation.report import Strong
from mrlearn.study.spec import RunSpec
from mrlearn.study.stats import blocked, cell_matrix, crossed_interval, holm, mean_std, verdict

#: ``stopped_by`` of a reference row (an arm with ``method: {name: reference, ...}``): it trains nothing
NOT_TRAINED = "not_trained"
Cells = dict[tuple[str, str, str], dict[tuple[int, str], tuple[float, int]]]


def point_label(point: dict[str, Any]) -> str:
    """``key=value, ...`` of a grid point; mapping values with their keys sorted, so a point reads the same
    whichever order its YAML gave them in (the stopping check finds a comparison's interval by this label)."""
    return ", ".join(f"{k.split('.')[-1]}={json.loads(json.dumps(v, sort_keys=True))}" for k, v in point.items()) or "-"


def point_key(point: dict[str, Any]) -> tuple:
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in point.items()))


def status(values: Sequence[Any], stopped_by: Sequence[Any] = ()) -> str:
    """Convergence of a set of runs from their ``converged`` values: ``converged``, ``not converged (k/n runs)``,
    ``not trained`` (every run's ``stopped_by`` is ``not_trained``: reference rows) or ``unknown``. A classical
    reference whose iterative solver stopped at its iteration cap (``stopped_by: max_iter``) is not converged."""
    bad = sum(v is False for v in values)
    if bad:
        capped = [s for v, s in zip(values, stopped_by) if v is False]
        if capped and all(s == "max_iter" for s in capped):
            return f"not converged: solver at its iteration cap ({bad}/{len(values)} runs)"
        return f"not converged ({bad}/{len(values)} runs)"
    if stopped_by and all(s == NOT_TRAINED for s in stopped_by):
        return "not trained"
    return "converged" if values and all(v is True for v in values) else "unknown"


def _mark(text: str) -> str:
    return Strong(text) if text.startswith("not converged") else text


def _ci(low: float, high: float) -> str:
    return f"[{low:.2f}, {high:.2f}]" if low == low else "-"


def aggregate(rows: list[dict[str, Any]], grid_keys: list[str], cells: Cells | None = None,
              metrics: Sequence[str] = ("psnr", "ssim", "nmse")) -> list[dict[str, Any]]:
    """Per (arm, grid point, group): mean +- std over seeds of ``metrics``, the PSNR interval over seeds x subjects
    (with ``cells``), counts, convergence."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["arm"], tuple(r.get(k) for k in grid_keys), r["group"])].append(r)
    table = []
    for (arm, point, group), items in groups.items():
        entry: dict[str, Any] = {"arm": arm, **dict(zip(grid_keys, point)), "group": group, "seeds": len(items)}
        for m in metrics:
            mu, sd = mean_std([i.get(m, math.nan) for i in items])
            entry[f"{m}_mean"], entry[f"{m}_std"] = mu, sd
        if cells is not None:
            merged: dict[tuple[int, str], float] = {}
            for i in items:
                merged.update({k: v for k, (v, _) in cells.get((i["run_id"], group, "psnr"), {}).items()})
            ci = crossed_interval(cell_matrix(merged)[0]) if merged else None
            entry["psnr_ci95"] = _ci(ci.low, ci.high) if ci else "-"
            entry["subjects"] = ci.subjects if ci else 0
        entry["convergence"] = _mark(status([i.get("converged") for i in items], [i.get("stopped_by") for i in items]))
        table.append(entry)
    return table


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def paired_differences(cells: Cells, runs: list[RunSpec], baseline: str, rows: list[dict[str, Any]] | None = None,
                       metric: str = "psnr", stopping_sensitive: Sequence[str] = (),
                       metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every arm against ``baseline`` (see the module docstring); ``stopping_sensitive``: arms whose verdicts are
    blocked because their result depends on when training stopped (also read from a truthy ``stopping_sensitive``
    column of the ``rows``, per grid point and group). ``metrics`` (default ``[metric]``): every per-slice metric
    compared (e.g. ``[psnr, dice]``); with several, each entry has a ``metric`` column, the difference is ``d_mean``
    (else ``d<metric>_mean``) and the Holm family is every comparison of every metric."""
    names = list(metrics) if metrics else [metric]
    table: list[dict[str, Any]] = []
    for name in names:
        part = _metric_table(cells, runs, baseline, rows, name, stopping_sensitive)
        if len(names) > 1:  # one table of several metrics: the difference in one column, d_mean
            part = [{"metric": name, **{("d_mean" if k == f"d{name}_mean" else k): v for k, v in t.items()}}
                    for t in part]
        table.extend(part)
    family = [t for t in table if t["_family"]]
    for t, p_adj in zip(family, holm([t["p"] for t in family])):
        t["p_holm"] = p_adj
        t["verdict"] = verdict(t["ci95_low"], t["ci95_high"], t["subjects"], t["seeds"], *t["_args"],
                               p_adjusted=p_adj)
    for t in table:
        t["family"] = len(family)
        del t["_args"], t["_family"]
    return table


def _metric_table(cells: Cells, runs: list[RunSpec], baseline: str, rows: list[dict[str, Any]] | None,
                  metric: str, stopping_sensitive: Sequence[str]) -> list[dict[str, Any]]:
    """The comparisons of one metric, before the Holm adjustment (``_args``, ``_family``: for the verdict)."""
    by_id = {r.run_id: r for r in runs}
    conv: dict[tuple, list[Any]] = defaultdict(list)  # (arm, point, group) -> converged per run
    stops: dict[tuple, list[Any]] = defaultdict(list)  # (arm, point, group) -> stopped_by per run
    sensitive: dict[tuple, bool] = defaultdict(bool)
    for r in rows or []:
        run = by_id.get(r["run_id"])
        if run is None:
            continue
        key = (r["arm"], point_key(run.point), r["group"])
        conv[key].append(r.get("converged"))
        stops[key].append(r.get("stopped_by"))
        sensitive[key] |= _flag(r.get("stopping_sensitive"))
    base_run = {(point_key(r.point), r.seed): r.run_id for r in runs if r.arm == baseline}
    diffs: dict[tuple, dict[tuple[int, str], float]] = defaultdict(dict)
    slices: dict[tuple, int] = defaultdict(int)
    for run in runs:
        base_id = base_run.get((point_key(run.point), run.seed))
        if run.arm == baseline or base_id is None:
            continue
        for (rid, group, m), own in cells.items():
            if rid != run.run_id or m != metric:
                continue
            base = cells.get((base_id, group, metric), {})
            key = (run.arm, point_key(run.point), group)
            for cell, (value, n) in own.items():
                if cell in base and base[cell][1] == n:
                    diffs[key][cell] = value - base[cell][0]
                    slices[key] += n
    table = []
    for (arm, point, group), c in sorted(diffs.items()):
        ci = crossed_interval(cell_matrix(c)[0])
        states = [(a, status(conv.get((a, point, group), []), stops.get((a, point, group), [])))
                  for a in (arm, baseline)]
        bad = [a for a, s in states if s.startswith("not converged")]
        unknown = [a for a, s in states if s == "unknown"]
        touchy = [a for a in (arm, baseline) if a in stopping_sensitive or sensitive[(a, point, group)]]
        note = "; ".join(f"{a}: {s}" for a, s in states if s != "converged")
        why = blocked(ci.subjects, ci.seeds, bad, unknown, touchy, ci.low == ci.low)
        table.append({"arm": arm, "point": point_label({k: json.loads(v) for k, v in point}), "group": group,
                      f"d{metric}_mean": ci.mean, "ci95_low": ci.low, "ci95_high": ci.high, "subjects": ci.subjects,
                      "seeds": ci.seeds, "slices": slices[(arm, point, group)], "df": ci.df, "p": ci.p_value(),
                      "p_holm": math.nan, "convergence": Strong(note) if bad else (note or "both converged"),
                      "verdict": "no verdict: " + "; ".join(why) if why else "",
                      "_args": (bad, unknown, touchy), "_family": not why})
    return table
