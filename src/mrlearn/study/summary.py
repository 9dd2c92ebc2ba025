"""Study summary: ``study.csv`` (one row per run and group) and ``report.html`` (evaluation.report).

Report sections:
  * per arm, grid point and group: PSNR / SSIM / NMSE mean +- std over seeds (sample std, ``ddof = 1``);
  * paired per-slice difference against the baseline arm (``summary.baseline``): for the same grid point, seed,
    group, file and slice, ``d = metric(arm) - metric(baseline)``; mean and 95 % confidence interval
    ``mean +- t_{0.975, n-1} s / sqrt(n)`` over all paired slices (seeds pooled); an interval below zero marks
    "worse" than the baseline (negative transfer, in a multi-task study), above zero "better";
  * the scarce group's PSNR against ``summary.fraction_key`` per arm (mean +- std over seeds, a plot);
  * example images: target, zero-filled input and each arm's output for the first example slice of each group.
"""

from __future__ import annotations

import csv
import re
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mrlearn.study.runner import read_slices
from mrlearn.study.spec import RunSpec, StudySpec
from mrlearn.training.runfiles import atomic_write_text

METRICS = ("psnr", "ssim", "nmse")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN std for a single value)."""
    v = np.asarray([x for x in values if x == x], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def paired_ci(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean of paired differences and its two-sided Student-t confidence interval: (mean, low, high, n)."""
    from scipy import stats

    d = np.asarray([x for x in diffs if x == x], dtype=np.float64)
    n = int(d.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def _point_label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items()) or "-"


def collect(out: Path, runs: list[RunSpec]) -> list[dict[str, Any]]:
    """One row per finished run and group: run_id, arm, seed, grid keys, group, metrics."""
    rows = []
    for run in runs:
        path = out / "runs" / run.run_id / "result.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        for group, metrics in result.get("groups", {}).items():
            point = {k: v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in run.point.items()}
            row: dict[str, Any] = {"run_id": run.run_id, "arm": run.arm, "seed": run.seed, **point, "group": group}
            row.update({k: float(metrics.get(k, math.nan)) for k in METRICS})
            row["seconds"] = result.get("seconds", math.nan)
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


def aggregate(rows: list[dict[str, Any]], grid_keys: list[str]) -> list[dict[str, Any]]:
    """Mean +- std over seeds per (arm, grid point, group)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["arm"], tuple(r.get(k) for k in grid_keys), r["group"])].append(r)
    out = []
    for (arm, point, group), items in groups.items():
        entry: dict[str, Any] = {"arm": arm, **dict(zip(grid_keys, point)), "group": group, "seeds": len(items)}
        for m in METRICS:
            mu, sd = mean_std([i[m] for i in items])
            entry[f"{m}_mean"], entry[f"{m}_std"] = mu, sd
        out.append(entry)
    return out


def paired_differences(out: Path, runs: list[RunSpec], baseline: str, metric: str = "psnr") -> list[dict[str, Any]]:
    """Paired per-slice differences of every arm against ``baseline`` (same grid point, seed, group, slice)."""
    by_key: dict[tuple, dict[tuple, float]] = {}
    for run in runs:
        key = (run.arm, tuple(sorted((k, json.dumps(v)) for k, v in run.point.items())), run.seed)
        values = {(r["group"], r["fname"], r["slice"]): r[metric] for r in read_slices(out / "runs" / run.run_id)}
        if values:
            by_key[key] = values
    diffs: dict[tuple, list[float]] = defaultdict(list)
    for (arm, point, seed), values in by_key.items():
        if arm == baseline:
            continue
        base = by_key.get((baseline, point, seed))
        if base is None:
            continue
        for (group, fname, sl), v in values.items():
            if (group, fname, sl) in base:
                diffs[(arm, point, group)].append(v - base[(group, fname, sl)])
    rows = []
    for (arm, point, group), d in sorted(diffs.items()):
        mean, low, high, n = paired_ci(d)
        verdict = "better" if low > 0 else "worse" if high < 0 else "no significant difference"
        rows.append({"arm": arm, "point": _point_label({k: json.loads(v) for k, v in point}), "group": group,
                     f"d{metric}_mean": mean, "ci95_low": low, "ci95_high": high, "slices": n, "verdict": verdict})
    return rows


def fraction_figure(rows: list[dict[str, Any]], key: str, group: str | None):
    """Scarce-group PSNR against the fraction key, one line per arm (mean +- std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    arms = sorted({r["arm"] for r in rows})
    for arm in arms:
        sel = [r for r in rows if r["arm"] == arm and (group is None or r["group"] == group) and r.get(key) is not None]
        xs = sorted({float(r[key]) for r in sel})
        if not xs:
            continue
        stats = [mean_std([r["psnr"] for r in sel if float(r[key]) == x]) for x in xs]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[0 if s[1] != s[1] else s[1] for s in stats], marker="o",
                    capsize=3, label=arm)
    ax.set_xlabel(key.split(".")[-1])
    ax.set_ylabel(f"PSNR (dB){' of ' + group if group else ''}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def numeric_groups(rows: list[dict[str, Any]]) -> tuple[str, dict[str, float]] | None:
    """``("blocks", {"blocks=1": 1.0, ...})`` when every group is ``<name>=<number>`` with one name, else None."""
    parsed = {}
    for g in {str(r["group"]) for r in rows}:
        m = re.fullmatch(r"(\w+)=([-+]?\d+(?:\.\d+)?)", g)
        if m is None:
            return None
        parsed[g] = (m.group(1), float(m.group(2)))
    names = {name for name, _ in parsed.values()}
    return (names.pop(), {g: v for g, (_, v) in parsed.items()}) if len(names) == 1 else None


def group_curve_figure(rows: list[dict[str, Any]], grid_keys: list[str], name: str, xs: dict[str, float]):
    """PSNR and SSIM against a numeric group (e.g. ``blocks=d``), one line per arm and grid point (mean +- std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    lines = sorted({(r["arm"], *(str(r.get(k)) for k in grid_keys)) for r in rows})
    for line in lines:
        sel = [r for r in rows if (r["arm"], *(str(r.get(k)) for k in grid_keys)) == line]
        groups = sorted({r["group"] for r in sel}, key=lambda g: xs[g])
        for ax, metric in zip(axes, ("psnr", "ssim")):
            stats = [mean_std([r[metric] for r in sel if r["group"] == g]) for g in groups]
            ax.errorbar([xs[g] for g in groups], [st[0] for st in stats],
                        yerr=[0 if st[1] != st[1] else st[1] for st in stats], marker="o", capsize=3, label=" ".join(line))
    for ax, metric in zip(axes, ("PSNR (dB)", "SSIM")):
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def examples_figure(out: Path, runs: list[RunSpec]):
    """Target | input | each arm's output (first seed, first grid point) for every group in the examples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first_point = runs[0].point if runs else {}
    seed0 = min(r.seed for r in runs) if runs else 0
    chosen = [r for r in runs if r.point == first_point and r.seed == seed0]
    panels: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
    for run in chosen:
        path = out / "runs" / run.run_id / "examples.npz"
        if not path.is_file():
            continue
        with np.load(path) as data:
            for key in data.files:
                group, kind = key.split("/", 1)
                if kind in ("target", "input") and not any(label == kind for label, _ in panels[group]):
                    panels[group].insert(0 if kind == "target" else min(1, len(panels[group])), (kind, data[key]))
                if kind == "output":
                    panels[group].append((run.arm, data[key]))
    if not panels:
        return None
    nrow = len(panels)
    ncol = max(len(v) for v in panels.values())
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.2 * ncol, 2.4 * nrow), squeeze=False)
    for i, (group, items) in enumerate(sorted(panels.items())):
        vmax = float(max(np.max(img) for _, img in items)) or 1.0
        for j in range(ncol):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(items):
                label, img = items[j]
                ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
                ax.set_title(f"{group}: {label}", fontsize=7)
    fig.tight_layout()
    return fig


def write_summary(spec: StudySpec, out: Path, runs: list[RunSpec]) -> Path:
    """``study.csv`` and ``report.html`` from the finished runs in ``out``; returns the report path."""
    from mrlearn.evaluation.report import Report

    rows = collect(out, runs)
    if rows:
        write_csv(out / "study.csv", rows)
    grid_keys = list(spec.grid)
    done = len({r["run_id"] for r in rows})
    report = Report(f"Study {spec.name}")
    base = "inline" if isinstance(spec.base, dict) else spec.base
    report.add_text(f"{spec.description}\n\nBase config: {base}. Runs finished: {done} of {len(runs)} "
                    f"(arms: {', '.join(spec.arms)}; seeds: {spec.seeds}; grid: {spec.grid or '-'}). "
                    f"Overrides for every run: {spec.set or '-'}.")
    table = aggregate(rows, grid_keys)
    cols = ["arm", *grid_keys, "group", "seeds"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    report.add_table("Metrics per arm and group (mean and std over seeds)", table, cols,
                     caption="fastMRI metrics (PSNR in dB over each volume, SSIM averaged over slices) on the "
                             "evaluation split, averaged over volumes; std over seeds (sample std).")
    baseline = spec.summary.get("baseline")
    if baseline:
        diffs = paired_differences(out, runs, baseline)
        if diffs:
            write_csv(out / "paired_differences.csv", diffs)
            report.add_table(f"Paired per-slice PSNR difference against '{baseline}' (95 % CI)", diffs,
                             caption="d = PSNR(arm) - PSNR(baseline) per slice (dB; same grid point, seed, file and "
                                     "slice), Student-t interval over slices pooled over seeds.")
    numeric = numeric_groups(rows) if rows else None
    if numeric is not None:
        report.add_figure(f"Metrics against {numeric[0]}", group_curve_figure(rows, grid_keys, *numeric),
                          caption=f"mean +- std over seeds, per arm and grid point; x = {numeric[0]}")
    key = spec.summary.get("fraction_key")
    if key and rows and any(r.get(key) is not None for r in rows):
        report.add_figure("Scarce-task PSNR against the scarce fraction", fraction_figure(rows, key, spec.summary.get("scarce_task")),
                          caption=f"mean +- std over seeds; x = {key}")
    try:
        fig = examples_figure(out, runs)
    except Exception as exc:  # a figure must not lose the tables
        fig = None
        report.add_text(f"example images could not be drawn: {exc}")
    if fig is not None:
        report.add_figure("Example images", fig, caption="first example slice per group: target, zero-filled input "
                                                         "and each arm's output (first grid point, first seed)")
    return report.write(out)
