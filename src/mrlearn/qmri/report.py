"""Tables, figures (matplotlib Agg, PNGs beside the HTML) and ``report.html`` of the label study.

The report is written by the one HTML writer (:class:`mrlearn.evaluation.report.Report`); figure panels are at
least 300 px wide and their text at least 10 pt. Every network's convergence record is listed, and a network
stopped by a cap while its validation loss was still improving is marked **not converged** in the tables.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from mrlearn.io import atomic_write_bytes, atomic_write_text, write_json

GRID_PARAMS = ("f", "D", "Dstar")
COLS = ("snr", "method", "alpha", "param", "abs_bias", "bias", "std", "rmse", "rel_abs_bias", "rel_std", "rel_rmse")


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per SNR, method and parameter with the grid summaries."""
    rows = []
    for snr, per in results["snr"].items():
        for method, r in per.items():
            for k, s in r["summary"].items():
                rows.append({"snr": float(snr), "method": method, "alpha": results["alphas"].get(method), "param": k, **s})
    return rows


def write_tables(out: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k])) for k in COLS})
    atomic_write_text(out / "table.csv", buf.getvalue())
    write_json(out / "table.json", rows)


def _save(fig, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def make_figures(out: Path, results: dict[str, Any], map_axes: list[str]) -> list[tuple[str, str]]:
    """Write PNGs; returns (caption, file name) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11})
    figs: list[tuple[str, str]] = []
    names = results["names"]
    axes = {k: np.asarray(v) for k, v in results["axes"].items()}
    n = [len(axes[k]) for k in GRID_PARAMS]
    ia, ib = GRID_PARAMS.index(map_axes[0]), GRID_PARAMS.index(map_axes[1])
    ic = ({0, 1, 2} - {ia, ib}).pop()
    for snr, per in results["snr"].items():
        methods = list(per)
        for metric in ("bias", "std"):
            fig, ax = plt.subplots(len(methods), 3, figsize=(14, 3.4 * len(methods)), squeeze=False)
            for r, m in enumerate(methods):
                for c, k in enumerate(GRID_PARAMS):
                    vol = per[m]["maps"][metric][:, names.index(k)].reshape(n)
                    sl = np.take(vol, n[ic] // 2, axis=ic)  # axes (ia, ib) in sorted order
                    if ia > ib:
                        sl = sl.T
                    lim = np.nanmax(np.abs([per[mm]["maps"][metric][:, names.index(k)] for mm in methods]))
                    im = ax[r, c].imshow(sl.T, origin="lower", aspect="auto", cmap="RdBu_r" if metric == "bias" else "viridis",
                                         vmin=-lim if metric == "bias" else 0, vmax=lim,
                                         extent=[axes[map_axes[0]][0], axes[map_axes[0]][-1], axes[map_axes[1]][0], axes[map_axes[1]][-1]])
                    ax[r, c].set_title(f"{m}: {metric} {k}", fontsize=11)
                    ax[r, c].set_xlabel(map_axes[0], fontsize=10)
                    ax[r, c].set_ylabel(map_axes[1], fontsize=10)
                    fig.colorbar(im, ax=ax[r, c])
            fig.subplots_adjust(hspace=0.6, wspace=0.35, left=0.06, right=0.97, top=0.95, bottom=0.05)
            figs.append((f"SNR {snr}: {metric} maps over ({map_axes[0]}, {map_axes[1]}) at the middle "
                         f"{GRID_PARAMS[ic]} = {axes[GRID_PARAMS[ic]][n[ic] // 2]:.3g}",
                         _save(fig, out / f"maps_{metric}_snr{snr}.png")))
            plt.close(fig)
        fig, ax = plt.subplots(3, 3, figsize=(14, 11), squeeze=False)
        for r, k in enumerate(GRID_PARAMS):
            j = GRID_PARAMS.index(k)
            other = tuple(i for i in range(3) if i != j)
            for m in methods:
                for c, metric in enumerate(("bias", "std", "rmse")):
                    vol = per[m]["maps"][metric][:, names.index(k)].reshape(n)
                    ax[r, c].plot(axes[k], vol.mean(axis=other), marker="o", ms=3, label=m)
                    ax[r, c].set_title(f"{metric} of {k} vs true {k}", fontsize=11)
            ax[r, 0].axhline(0, color="k", lw=0.5)
        ax[0, 2].legend(fontsize=10)
        fig.subplots_adjust(hspace=0.45, wspace=0.3, left=0.07, right=0.98, top=0.93, bottom=0.1)
        figs.append((f"SNR {snr}: bias, std and RMSE against the groundtruth value (mean over the other grid axes)",
                     _save(fig, out / f"curves_snr{snr}.png")))
        plt.close(fig)
        fig, ax = plt.subplots(1, 3, figsize=(15, 4.8))
        path = sorted((results["alphas"][m], m) for m in methods
                      if results["alphas"].get(m) is not None and "wide" not in m)
        for c, k in enumerate(GRID_PARAMS):
            xs = [per[m]["summary"][k]["rel_abs_bias"] for _, m in path]
            ys = [per[m]["summary"][k]["rel_std"] for _, m in path]
            ax[c].plot(xs, ys, "-o", color="C0")
            for (a, _), x, y in zip(path, xs, ys):
                ax[c].annotate(f"a={a:g}", (x, y), fontsize=10)
            for m, mk in (("net_ss", "s"), ("mle_fit", "^")):
                if m in per:
                    ax[c].plot(per[m]["summary"][k]["rel_abs_bias"], per[m]["summary"][k]["rel_std"], mk, label=m)
            ax[c].set_xlabel("mean |bias| / range")
            ax[c].set_ylabel("mean std / range")
            ax[c].set_title(f"{k} (a=0: GT labels, a=1: MLE labels)", fontsize=11)
            if ax[c].get_legend_handles_labels()[0]:
                ax[c].legend(fontsize=10)
        fig.subplots_adjust(wspace=0.3, left=0.06, right=0.98, top=0.9, bottom=0.14)
        figs.append((f"SNR {snr}: bias-variance across alpha", _save(fig, out / f"bias_variance_snr{snr}.png")))
        plt.close(fig)
    return figs


def training_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trained network: its convergence record (``status`` bold 'not converged' when a cap stopped it
    while improving)."""
    from mrlearn.evaluation.report import Strong

    rows = []
    for key, rec in results.get("training", {}).items():
        status = "converged" if rec.get("converged") else Strong("not converged")
        rows.append({"network": key, "steps": rec.get("steps"), "best_step": rec.get("best_step"),
                     "best_epoch": rec.get("best_epoch"), "best_val_loss": rec.get("best_val_loss"),
                     "stopped_by": rec.get("stopped_by"), "init_from_gt": rec.get("init_from_gt"), "status": status})
    return rows


def write_report(out: Path, title: str, results: dict[str, Any], rows: list[dict[str, Any]],
                 figs: list[tuple[str, str]], notes: list[str]) -> Path:
    """``report.html`` (one self-contained file): notes, findings, training status, summary table, figures."""
    from mrlearn.evaluation.report import Report, Strong

    report = Report(title)
    report.add_text("\n\n".join(notes))
    training = training_rows(results)
    unconverged = {r["network"].split("/", 1)[1] for r in training if r["status"] != "converged"}
    findings = list(results["findings"])
    if unconverged:
        findings.insert(0, f"Not converged (stopped by a cap while improving): {', '.join(sorted(unconverged))}; "
                           "findings involving them are not conclusions about the labels.")
    report.add_text("\n\n".join(findings), title="Findings (seed claims checked)")
    if training:
        report.add_table("Training of each network", training,
                         caption="steps = optimiser steps; the weights used are those of the best validation epoch")
    shown = []
    for r in rows:
        r = dict(r)
        if r["method"] in unconverged:
            r["method"] = Strong(f"{r['method']} (not converged)")
        shown.append(r)
    report.add_table("Summary over the grid", shown, columns=list(COLS),
                     caption="bias, std and RMSE in the parameter's units, averaged over the grid; std: the sample "
                             "standard deviation (ddof = 1) over the noise repeats at each grid point; rel_* divide by "
                             "the training range width")
    for cap, name in figs:
        report.add_figure(cap, out / name)
    return report.write(out)
