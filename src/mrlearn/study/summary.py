"""Study summary: ``study.csv`` (one row per run and group), ``cells.csv`` (``study.cells``), ``paired_differences.csv``
and ``report.html``; all statistics are computed from ``cells.csv``'s cells, so a study folder holding only
``study.csv`` and ``cells.csv`` (no run folders) is summarised to the same tables.

``study.csv`` columns: run_id, arm, seed, the grid keys, group, psnr, ssim, nmse (and psnr_noiseless,
ssim_noiseless, nmse_noiseless against the noiseless reference where simulated data have one), seconds, and each run's
convergence record (``steps``, ``best_step``, ``stopped_by``, ``converged``; empty when the run recorded none;
``samples_per_task`` as JSON when recorded; multi-task runs: each group's own selection, with ``samples_at_best``).

Report sections (``evaluation.report``):
  * the study as run: description (from the study file), base config, budget policy, runs finished / in progress;
  * per arm, grid point and group: mean and sample std (``ddof = 1``) over seeds, the PSNR interval over seeds x
    subjects (``study.stats``), the numbers of subjects and seeds, and the convergence status - **not converged**
    when any of its runs was stopped by a cap while still improving;
  * paired differences against the baseline arm (``summary.baseline``), per grid point and group
    (``study.compare``): mean of ``metric(arm) - metric(baseline)``, its unadjusted 95 % interval, df, p and
    Holm-adjusted p, counts of subjects and seeds, the convergence note of both arms beside the number, and a
    verdict only where ``study.stats`` allows one (Holm-adjusted over the study's comparisons);
  * the stopping check (``study.stopping_check``): each checked arm's score as run and with every patience and cap
    scaled, the difference and tolerance, and whether it is stopping-sensitive (``stopping_check.csv``; the
    ``stopping_sensitive`` column of ``study.csv`` blocks the verdicts of its comparisons);
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
from typing import Any, Iterator, Sequence

import numpy as np

from mrlearn.evaluation.report import Report
from mrlearn.evaluation.spread import std_note
from mrlearn.io import atomic_write_text
from mrlearn.study.cells import CELLS_FILE, cell_index, csv_point, study_cells
from mrlearn.study.compare import NOT_TRAINED, aggregate, paired_differences, status  # noqa: F401 (re-exported)
from mrlearn.study.results import CONVERGENCE_FIELDS, read_result
from mrlearn.study.spec import RunSpec, StudySpec
from mrlearn.study.stopping_check import caption as stopping_caption, stopping_table
from mrlearn.study.stats import ALPHA, MIN_SEEDS, MIN_SUBJECTS, mean_std, paired_ci, verdict  # noqa: F401

METRICS = ("psnr", "ssim", "nmse")


def _parse(text: str) -> Any:
    """A ``study.csv`` cell as ``collect`` wrote it: None, bool, int, float or the string (str() round-trips)."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def previous_rows(out: Path, runs: list[RunSpec]) -> dict[str, list[dict[str, Any]]]:
    """``run_id -> rows`` of the study's previous ``study.csv`` for runs without a run folder (a committed study:
    ``study.csv`` and ``cells.csv`` only); arm, seed and grid point typed from the run's spec."""
    path = out / "study.csv"
    gone = {r.run_id: r for r in runs if not (out / "runs" / r.run_id).exists()}
    if not gone or not path.is_file():
        return {}
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            run = gone.get(raw.get("run_id", ""))
            if run is None:
                continue
            typed = {"run_id": run.run_id, "arm": run.arm, "seed": run.seed, **csv_point(run)}
            found[run.run_id].append({k: typed[k] if k in typed else (v if k == "group" else _parse(v))
                                      for k, v in raw.items()})
    return dict(found)


def collect(out: Path, runs: list[RunSpec]) -> list[dict[str, Any]]:
    """One row per finished run and group: ids, grid keys, group, metrics, seconds, convergence record (a run without
    a folder: its rows of the previous ``study.csv``, :func:`previous_rows`)."""
    rows = []
    kept = previous_rows(out, runs)
    for run in runs:
        result = read_result(out / "runs" / run.run_id)
        if result is None:
            rows.extend(kept.get(run.run_id, []))
            continue
        conv_all = result.get("convergence") or {}
        method = run.overrides.get("method")
        reference = isinstance(method, dict) and method.get("name") == "reference"  # a study's reference row
        for group, metrics in result.get("groups", {}).items():
            point = csv_point(run)
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
            if conv.get("samples_at_best") is not None:
                row["samples_at_best"] = conv["samples_at_best"]
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


def _task_curves(out: Path, runs: list[RunSpec], task: str) -> tuple[dict[str, list], dict[str, list]]:
    """arm -> per-seed validation curves of ``task`` (first grid point only) from the runs' ``metrics.json``, and
    arm -> per-seed ``(best_step, stop step)`` of those runs (the figure's best and stop marks): the task's own
    selection where the run recorded one (``task_selection``), else the run's."""
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
            own = (m.get("task_selection") or {}).get(task) or {}
            marks[run.arm].append((own["best_step"], own.get("stop_step") or m.get("steps")) if "best_step" in own
                                  else (m.get("best_step"), m.get("steps")))
    return dict(curves), dict(marks)


def _example_files(out: Path, runs: list[RunSpec]) -> Iterator[tuple[RunSpec, Any]]:
    """``(run, examples.npz contents)`` of every run of the first grid point and the first seed that saved examples."""
    first_point = runs[0].point if runs else {}
    seed0 = min(r.seed for r in runs) if runs else 0
    for run in (r for r in runs if r.point == first_point and r.seed == seed0):
        path = out / "runs" / run.run_id / "examples.npz"
        if path.is_file():
            with np.load(path) as data:
                yield run, data


def _examples(out: Path, runs: list[RunSpec]) -> list[Any]:
    """Per group: target, zero-filled input, then each arm's output (first grid point, first seed), with the target
    volume's maximum (``maxval``) as the metrics' data range where the run recorded it."""
    from mrlearn.evaluation.figures import ExampleSlice

    found: dict[str, dict[str, Any]] = defaultdict(lambda: {"outputs": []})
    for run, data in _example_files(out, runs):
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


def _overlays(out: Path, runs: list[RunSpec]) -> list[Any]:
    """Per group: the target image, its reference labels and each arm's labels of the example slice (first grid
    point, first seed) where the runs saved them (``<group>/labels``, ``<group>/seg`` in ``examples.npz``)."""
    from mrlearn.evaluation.figures import LabelSlice

    found: dict[str, dict[str, Any]] = defaultdict(lambda: {"arms": []})
    for run, data in _example_files(out, runs):
        for group in sorted({k.split("/", 1)[0] for k in data.files}):
            if f"{group}/labels" in data.files and f"{group}/seg" in data.files:
                found[group].setdefault("image", data[f"{group}/target"])
                found[group].setdefault("labels", data[f"{group}/labels"])
                found[group]["arms"].append((run.arm, data[f"{group}/seg"]))
    return [LabelSlice(g, f["image"], f["labels"], f["arms"]) for g, f in sorted(found.items()) if f["arms"]]


def write_summary(spec: StudySpec, out: Path, runs: list[RunSpec], busy: Sequence[str] = ()) -> Path:
    """``study.csv`` and ``report.html`` from the finished runs in ``out``; returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mrlearn.study.figures import fraction_figure, group_curve_figure, numeric_groups, task_curve_figure

    rows = collect(out, runs)
    cells = study_cells(out, runs, {r["run_id"] for r in rows})
    if rows:
        write_csv(out / "study.csv", rows)
    if cells:
        write_csv(out / CELLS_FILE, cells)
    index = cell_index(cells)
    base_arm = spec.summary.get("baseline")
    compared = spec.summary.get("verdict_metrics") or ["psnr"]  # one Holm family over every compared metric
    stopping = stopping_table(spec, out, runs, rows,  # sets each row's stopping_sensitive (study.stopping_check)
                              lambda: paired_differences(index, runs, base_arm, rows=rows, metrics=compared)
                              if base_arm else [])
    if stopping:
        write_csv(out / "study.csv", rows)
        write_csv(out / "stopping_check.csv", stopping)
    committed = not stopping and spec.stopping_check and (out / "stopping_check.csv").is_file()
    if committed:  # a copy of the committed rows without the check runs: report the committed table
        with open(out / "stopping_check.csv", newline="", encoding="utf-8") as fh:
            text = ("arm", "point", "group", "seeds", "metric", "sensitive")
            stopping = [{k: v if k in text or v in ("", "nan") else float(v) for k, v in r.items()}
                        for r in csv.DictReader(fh)]
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
    cols = ["arm", *grid_keys, "group", "seeds", "subjects"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    cols += ["psnr_ci95", "convergence"] if "psnr" in metrics else ["convergence"]
    caption = ("fastMRI metrics on the evaluation split, averaged over volumes; _mean and _std over seeds: "
               f"{std_note('seeds')} psnr_ci95: 95 % interval of the mean PSNR over seeds x subjects (crossed "
               "random effects, Satterthwaite t; one cell per seed and subject: the mean over its slices)."
               if "psnr" in metrics else f"the runner's metrics ({', '.join(metrics)}); mean and std over seeds: "
               f"{std_note('seeds')}")
    report.add_table("Metrics per arm and group", aggregate(rows, grid_keys, index if cells else None, metrics), cols, caption=caption)
    baseline = spec.summary.get("baseline")
    if baseline:
        diffs = paired_differences(index, runs, baseline, rows=rows, metrics=compared)
        if diffs:
            write_csv(out / "paired_differences.csv", diffs)
            m = diffs[0]["family"]
            over = f" of {', '.join(compared)}" if len(compared) > 1 else ""
            for metric in compared:
                part = [d for d in diffs if d.get("metric", metric) == metric]
                if not part:
                    continue
                name = metric.upper() if metric in ("psnr", "ssim", "nmse") else metric.capitalize()
                unit = " (dB)" if metric == "psnr" else ""
                report.add_table(f"Paired {name} difference against '{baseline}' (unadjusted 95 % interval; verdicts "
                                 f"Holm-adjusted over {m} comparison{'s' if m != 1 else ''}{over})", part,
                                 caption=f"d = {name}(arm) - {name}(baseline){unit}, one cell per seed and subject: the "
                                         "mean over the subject's slices (same grid point, seed and group); interval: "
                                         "crossed random effects (seeds x subjects), t with Satterthwaite df (df); p: "
                                         f"its t test of d = 0; p_holm: Holm-adjusted over the study's {m} "
                                         f"comparison(s){over} that may have a verdict (family). A verdict needs both "
                                         "arms converged and not stopping-sensitive, at least "
                                         f"{MIN_SUBJECTS} subjects and {MIN_SEEDS} seeds; it is better/worse when "
                                         f"p_holm <= {ALPHA}.")
    if stopping:
        report.add_table(f"Stopping check: scores with every patience and cap x{spec.stopping_check['factor']:g}",
                         stopping, caption=stopping_caption(spec) + (" (Read from stopping_check.csv: the check "
                                                                      "runs are not in this folder.)" if committed else ""))
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
                                      "fine-tuning phase, after its pretraining steps); star: the validation "
                                      "this task was selected at (its own checkpoint), cross: where its stopping "
                                      "rule fired or the run stopped; a curve still rising at its end was stopped "
                                      "while improving")
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
        overlays = _overlays(out, runs)
        if overlays:
            from mrlearn.evaluation.figures import label_overlay_figure

            report.add_figure("Label overlays", label_overlay_figure(overlays), caption=(
                "the same example slice per group: the reference labels and each arm's labels (first grid point, "
                "first seed) drawn over the target image, one colour per class; under each, the slice's mean "
                "foreground Dice against the reference"))
            plt.close("all")
    except (OSError, ValueError, KeyError) as exc:  # an image must not lose the tables
        report.add_text(f"example images could not be drawn: {exc}")
    return report.write(out)
