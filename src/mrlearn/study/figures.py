"""Figures of a study report (matplotlib, Agg): the scarce group's PSNR against a fraction key, and metrics against
a numeric group (``blocks=1``, ``blocks=2``, ...). Error bars: sample std (``ddof = 1``) over seeds
(:mod:`mrlearn.evaluation.spread`). Validation curves mark each run's best validation and its stop point.
"""

from __future__ import annotations

import re
from typing import Any

from mrlearn.study.stats import mean_std


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


def task_curves(history: list[dict[str, Any]], task: str) -> list[tuple[float, float, float]]:
    """``(step, samples of task seen, val PSNR of task)`` of every validation in a run's ``metrics.json`` history
    (entries with ``val_psnr/<task>``, ``step`` and ``samples/<task>``)."""
    out = []
    for e in history or []:
        if f"val_psnr/{task}" in e and "step" in e:
            out.append((float(e["step"]), float(e.get(f"samples/{task}", "nan")), float(e[f"val_psnr/{task}"])))
    return out


def task_curve_figure(curves: dict[str, list[list[tuple[float, float, float]]]], task: str,
                      marks: dict[str, list[tuple[float | None, float | None]]] | None = None):
    """Validation PSNR of ``task`` against optimiser steps and against the samples of ``task`` seen, one colour per
    arm, one line per seed (``curves``: arm -> per-seed curves from :func:`task_curves`). ``marks``: arm -> per seed
    ``(best_step, stop_step)`` of the run (its ``metrics.json``): the validation nearest each is marked, the best
    with a star, the stop with a cross."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (arm, per_seed) in enumerate(sorted(curves.items())):
        arm_marks = (marks or {}).get(arm) or []
        for j, pts in enumerate(per_seed):
            best, stop = arm_marks[j] if j < len(arm_marks) else (None, None)
            for ax, col in zip(axes, (0, 1)):
                ax.plot([p[col] for p in pts], [p[2] for p in pts], color=f"C{i % 10}", lw=1, alpha=0.8,
                        label=arm if j == 0 else None)
                for step, marker, name in ((best, "*", "best"), (stop, "X", "stop")):
                    if step is None or not pts:
                        continue
                    p = min(pts, key=lambda q: abs(q[0] - float(step)))
                    ax.plot(p[col], p[2], marker=marker, ms=11 if marker == "*" else 8, color=f"C{i % 10}", mec="k",
                            ls="none", label=f"{arm}: {name}" if j == 0 else None)
    for ax, xlabel in zip(axes, ("optimiser steps", f"{task} samples seen")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"validation PSNR of {task} (dB)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig
