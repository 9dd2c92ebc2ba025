"""Study summary: ``study.csv`` (one row per run and group), ``paired_differences.csv`` and ``report.html``.

``study.csv`` columns: run_id, arm, seed, the grid keys, group, psnr, ssim, nmse (and psnr_noiseless,
ssim_noiseless, nmse_noiseless against the noiseless reference where simulated data have one), seconds, and each run's
convergence record (``steps``, ``best_step``, ``stopped_by``, ``converged``; empty when the run recorded none;
``samples_per_task`` as JSON when recorded).

Report sections (``evaluation.report``):
  * the study as run: description (from the study file), base config, budget policy, runs finished / in progress;
  * per arm, grid point and group: mean and sample std (``ddof = 1``) over seeds, a bootstrap interval of PSNR over
    seeds x volumes (``study.stats``), the numbers of volumes and seeds, and the convergence status - **not converged** when any
    of its runs was stopped by a cap while still improving;
  * paired differences against the baseline arm (``summary.baseline``), per grid point and group: mean of
    ``metric(arm) - metric(baseline)``, its two-way bootstrap interval, counts of volumes and seeds, the
    convergence note of both arms beside the number, and a verdict only where ``study.stats.verdict`` allows one;
  * figures (``study.figures``): metrics against a numeric group or the fraction key, and (``summary.scarce_task``)
    that task's validation PSNR against steps and against its samples seen; example images (target, zero-filled
    input, each arm's output, with that slice's PSNR/SSIM, and their error maps on one colour scale with a colour bar:
    ``evaluation.figures``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mrlearn.evaluation.report import Report, Strong
from mrlearn.evaluation.spread import std_note
from mrlearn.io import atomic_write_text
from mrlearn.study.results import CONVERGENCE_FIELDS, read_result, read_slices
from mrlearn.study.spec import RunSpec, StudySpec
from mrlearn.study.stats import bootstrap_ci, cell_matrix, counts, mean_std, paired_ci, verdict  # noqa: F401

METRICS = ("psnr", "ssim", "nmse")
#: ``stopped_by`` of a reference row (an arm with ``method: {name: reference, ...}``): it trains nothing
NOT_TRAINED = "not_trained"


def _point_label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items()) or "-"


def _point_key(point: dict[str, Any]) -> tuple:
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in point.items()))


def collect(out: Path, runs: list[RunSpec]) -> list[dict[str, Any]]:
    """One row per finished run and group: ids, grid keys, group, metrics, seconds, convergence record."""
    rows = []
    for run in runs:
        result = read_result(out / "runs" / run.run_id)
        if result is None:
            continue
        conv_all = result.get("convergence") or {}
        method = run.overrides.get("method")
        reference = isinstance(method, dict) and method.get("name") == "reference"  # a study's reference row
        for group, metrics in result.get("groups", {}).items():
            point = {k: v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in run.point.items()}
            row: dict[str, Any] = {"run_id": run.run_id, "arm": run.arm, "seed": run.seed, **point, "group": group}
            row.update({k: float(metrics.get(k, math.nan)) for k in METRICS})
            row.update({f"{k}_noiseless": float(metrics[f"{k}_noiseless"]) for k in METRICS if f"{k}_noiseless" in metrics})
            row.update({k: float(v) for k, v in sorted(metrics.items())  # a runner's own metrics (e.g. qMRI bias)
                        if k not in row and isinstance(v, (int, float)) and not isinstance(v, bool)})
            row["seconds"] = result.get("seconds", math.nan)
            conv = conv_all.get(group) or {}
            row.update({k: conv.get(k) for k in CONVERGENCE_FIELDS})
            if reference and all(conv.get(k) is None for k in CONVERGENCE_FIELDS):
                row["stopped_by"] = NOT_TRAINED  # zero-filled or a classical method: nothing to converge
            if conv.get("samples_per_task") is not None:
                row["samples_per_task"] = json.dumps(conv["samples_per_task"], sort_keys=True)
            rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


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


def _cells(out: Path, run_ids: Sequence[tuple[int, str]], group: str, metric: str) -> dict[tuple[int, str], list[float]]:
    """Per (seed, volume): the slices' ``metric`` values of ``group`` in the given runs."""
    cells: dict[tuple[int, str], list[float]] = defaultdict(list)
    for seed, rid in run_ids:
        for r in read_slices(out / "runs" / rid):
            if r["group"] == group:
                cells[(seed, r["fname"])].append(r[metric])
    return cells


def aggregate(rows: list[dict[str, Any]], grid_keys: list[str], out: Path | None = None,
              metrics: Sequence[str] = METRICS) -> list[dict[str, Any]]:
    """Per (arm, grid point, group): mean +- std over seeds of ``metrics``, PSNR bootstrap interval, counts,
    convergence."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["arm"], tuple(r.get(k) for k in grid_keys), r["group"])].append(r)
    table = []
    for (arm, point, group), items in groups.items():
        entry: dict[str, Any] = {"arm": arm, **dict(zip(grid_keys, point)), "group": group, "seeds": len(items)}
        for m in metrics:
            mu, sd = mean_std([i.get(m, math.nan) for i in items])
            entry[f"{m}_mean"], entry[f"{m}_std"] = mu, sd
        if out is not None:
            D, _, _ = cell_matrix(_cells(out, [(i["seed"], i["run_id"]) for i in items], group, "psnr"))
            _, low, high = bootstrap_ci(D)
            entry["psnr_ci95"] = f"[{low:.2f}, {high:.2f}]" if low == low else "-"
            entry["volumes"] = counts(D)[0] if D.size else 0
        entry["convergence"] = _mark(status([i.get("converged") for i in items], [i.get("stopped_by") for i in items]))
        table.append(entry)
    return table


def paired_differences(out: Path, runs: list[RunSpec], baseline: str, metric: str = "psnr",
                       rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every arm against ``baseline``: per-(seed, volume) mean paired differences, bootstrap interval, verdict."""
    conv: dict[tuple, list[Any]] = defaultdict(list)  # (arm, point, group) -> converged per run
    stops: dict[tuple, list[Any]] = defaultdict(list)  # (arm, point, group) -> stopped_by per run
    for r in rows if rows is not None else []:
        run = next(x for x in runs if x.run_id == r["run_id"])
        conv[(r["arm"], _point_key(run.point), r["group"])].append(r.get("converged"))
        stops[(r["arm"], _point_key(run.point), r["group"])].append(r.get("stopped_by"))
    by_key: dict[tuple, dict[tuple, float]] = {}
    for run in runs:
        values = {(r["group"], r["fname"], r["slice"]): r[metric] for r in read_slices(out / "runs" / run.run_id)}
        if values:
            by_key[(run.arm, _point_key(run.point), run.seed)] = values
    cells: dict[tuple, dict[tuple[int, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for (arm, point, seed), values in by_key.items():
        base = by_key.get((baseline, point, seed))
        if arm == baseline or base is None:
            continue
        for (group, fname, sl), v in values.items():
            if (group, fname, sl) in base:
                cells[(arm, point, group)][(seed, fname)].append(v - base[(group, fname, sl)])
    table = []
    for (arm, point, group), c in sorted(cells.items()):
        D, _, _ = cell_matrix(c)
        mean, low, high = bootstrap_ci(D)
        n_vol, n_seed = counts(D)
        arm_status = status(conv.get((arm, point, group), []), stops.get((arm, point, group), []))
        base_status = status(conv.get((baseline, point, group), []), stops.get((baseline, point, group), []))
        bad = [a for a, s in ((arm, arm_status), (baseline, base_status)) if s.startswith("not converged")]
        unknown = [a for a, s in ((arm, arm_status), (baseline, base_status)) if s == "unknown"]
        note = "; ".join(f"{a}: {s}" for a, s in ((arm, arm_status), (baseline, base_status)) if s != "converged")
        table.append({"arm": arm, "point": _point_label({k: json.loads(v) for k, v in point}), "group": group,
                      f"d{metric}_mean": mean, "ci95_low": low, "ci95_high": high, "volumes": n_vol, "seeds": n_seed,
                      "slices": sum(len(v) for v in c.values()),
                      "convergence": Strong(note) if bad else (note or "both converged"),
                      "verdict": verdict(low, high, n_vol, n_seed, bad, unknown)})
    return table


def _task_curves(out: Path, runs: list[RunSpec], task: str) -> tuple[dict[str, list], dict[str, list]]:
    """arm -> per-seed validation curves of ``task`` (first grid point only) from the runs' ``metrics.json``, and
    arm -> per-seed ``(best_step, steps)`` of those runs (the figure's best and stop marks)."""
    from mrlearn.io import read_json
    from mrlearn.study.figures import task_curves

    first = runs[0].point if runs else {}
    curves: dict[str, list[list[tuple[float, float, float]]]] = defaultdict(list)
    marks: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
    for run in runs:
        if run.point != first:
            continue
        m = read_json(out / "runs" / run.run_id / "metrics.json") or {}
        pts = task_curves(m.get("history") or [], task)
        if pts:
            curves[run.arm].append(pts)
            marks[run.arm].append((m.get("best_step"), m.get("steps")))
    return dict(curves), dict(marks)


def _examples(out: Path, runs: list[RunSpec]) -> list[Any]:
    """Per group: target, zero-filled input, then each arm's output (first grid point, first seed), with the target
    volume's maximum (``maxval``) as the metrics' data range where the run recorded it."""
    from mrlearn.evaluation.figures import ExampleSlice

    first_point = runs[0].point if runs else {}
    seed0 = min(r.seed for r in runs) if runs else 0
    found: dict[str, dict[str, Any]] = defaultdict(lambda: {"outputs": []})
    for run in (r for r in runs if r.point == first_point and r.seed == seed0):
        path = out / "runs" / run.run_id / "examples.npz"
        if not path.is_file():
            continue
        with np.load(path) as data:
            for key in data.files:
                group, kind = key.split("/", 1)
                if kind in ("target", "input", "maxval"):
                    found[group].setdefault(kind, data[key])
                elif kind == "output":
                    found[group]["outputs"].append((run.arm, data[key]))
    shown = []
    for group, f in sorted(found.items()):
        if "target" not in f:
            continue
        images = ([("zero-filled input", f["input"])] if "input" in f else []) + f["outputs"]
        shown.append(ExampleSlice(group, f["target"], images, float(f["maxval"]) if "maxval" in f else None))
    return shown


def write_summary(spec: StudySpec, out: Path, runs: list[RunSpec], busy: Sequence[str] = ()) -> Path:
    """``study.csv`` and ``report.html`` from the finished runs in ``out``; returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mrlearn.study.figures import fraction_figure, group_curve_figure, numeric_groups, task_curve_figure

    rows = collect(out, runs)
    if rows:
        write_csv(out / "study.csv", rows)
    grid_keys = list(spec.grid)
    done = len({r["run_id"] for r in rows})
    report = Report(f"Study {spec.name}")
    if spec.description:
        report.add_text(spec.description, title="Description (from the study file; figures quoted there are not "
                                                 "this study's results)")
    base = "inline" if isinstance(spec.base, dict) else spec.base
    report.add_text(f"Base config: {base}. Runs finished: {done} of {len(runs)}"
                    + (f" ({len(busy)} in progress in another process)" if busy else "")
                    + f". Arms: {', '.join(spec.arms)}; seeds: {spec.seeds}; grid: {spec.grid or '-'}. "
                    f"Overrides for every run: {spec.set or '-'}. Budget policy: {spec.budget or 'not declared'}.",
                    title="Study")
    not_conv = sorted({r["run_id"] for r in rows if r.get("converged") is False})
    if not_conv:
        report.add_text(f"{len(not_conv)} run(s) were stopped by a cap while still improving (not converged): "
                        f"{', '.join(not_conv)}. Their numbers understate what the method reaches.",
                        title="Not converged")
    metrics = tuple(spec.summary.get("metrics") or METRICS)  # summary.metrics: e.g. a qMRI study's rmse_Dstar
    cols = ["arm", *grid_keys, "group", "seeds", "volumes"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    cols += ["psnr_ci95", "convergence"] if "psnr" in metrics else ["convergence"]
    caption = ("fastMRI metrics on the evaluation split, averaged over volumes; _mean and _std over seeds: "
               f"{std_note('seeds')} psnr_ci95: bootstrap over seeds x volumes of the slices' PSNR per volume."
               if "psnr" in metrics else f"the runner's metrics ({', '.join(metrics)}); mean and std over seeds: "
               f"{std_note('seeds')}")
    report.add_table("Metrics per arm and group", aggregate(rows, grid_keys, out, metrics), cols, caption=caption)
    baseline = spec.summary.get("baseline")
    if baseline:
        diffs = paired_differences(out, runs, baseline, rows=rows)
        if diffs:
            write_csv(out / "paired_differences.csv", diffs)
            report.add_table(f"Paired PSNR difference against '{baseline}' (95 % bootstrap interval)", diffs,
                             caption="d = PSNR(arm) - PSNR(baseline) per slice (dB; same grid point, seed, file and "
                                     "slice), averaged per volume; interval: bootstrap over seeds x volumes. A verdict "
                                     "needs both arms converged and at least 3 volumes and 3 seeds.")
    numeric = numeric_groups(rows) if rows else None
    if numeric is not None:
        report.add_figure(f"Metrics against {numeric[0]}", group_curve_figure(rows, grid_keys, *numeric),
                          caption=f"mean ± std over seeds, per arm and grid point; x = {numeric[0]}. "
                                  f"{std_note('seeds')}")
    key = spec.summary.get("fraction_key")
    if key and rows and any(r.get(key) is not None for r in rows):
        report.add_figure("Scarce-task PSNR against the scarce fraction",
                          fraction_figure(rows, key, spec.summary.get("scarce_task")),
                          caption=f"mean ± std over seeds; x = {key}. {std_note('seeds')}")
    task = spec.summary.get("scarce_task")
    if task:
        curves, marks = _task_curves(out, runs, task)
        if curves:
            report.add_figure(f"Validation PSNR of '{task}' against steps and against its samples seen",
                              task_curve_figure(curves, task, marks),
                              caption="one line per seed, from each run's metrics.json history (transfer: the "
                                      "fine-tuning phase); star: the best validation, cross: where the run stopped; a "
                                      "curve still rising at its end was stopped while improving")
    plt.close("all")
    try:
        shown = _examples(out, runs)
        if shown:
            from mrlearn.evaluation.figures import example_figure

            report.add_figure("Example images", example_figure(shown), caption=(
                "first example slice per group: target, zero-filled input and each arm's output (first grid point, "
                "first seed) on one grey scale per row, with the PSNR and SSIM of that slice under each image (data "
                "range: the target volume's maximum; the slice's own where a run did not record it); below, the "
                "absolute errors, all on one colour scale (colour bar at the bottom right)"))
            plt.close("all")
    except (OSError, ValueError, KeyError) as exc:  # an image must not lose the tables
        report.add_text(f"example images could not be drawn: {exc}")
    return report.write(out)
