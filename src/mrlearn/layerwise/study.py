"""Seed 001 study (its Fig. 2-4): end-to-end vs greedy vs convex layer-wise training, 1..N blocks, two masks.

For each mask (``poisson``: 2-D Poisson disc 4x, 16 x 16 calibration; ``cartesian``: 1-D random columns 4x,
centre fraction 0.04) on the embedded dataset (phantom anatomy unless ``anatomy`` says otherwise):
  * end-to-end: one run per depth ``d = 1..N`` (a d-block network trained jointly, ``epochs`` epochs);
  * greedy: one run of N stages (``epochs`` epochs per block); depth d = the first d blocks;
  * convex (per ``convex_variants``): one run, one epoch (one convex solve) per block; depth d likewise.
All through :func:`mrlearn.layerwise.train.train` (the spine's Lightning path). Every network is scored on the
test split at every depth with the fastMRI metrics (per volume: PSNR over the volume, SSIM averaged over
slices, data range = volume max; magnitude of the complex output vs magnitude of the fully sampled SENSE image).
Also: the convex gap vs the number of sampled patterns (block 1), example images, the peak memory of one
training step (fresh processes, :mod:`mrlearn.layerwise.memory`) and wall times.

Writes ``<out>/results.csv`` (mask, method, blocks, psnr, ssim, nmse, ...), ``gap.csv``, ``memory.csv``,
``fig_*.png``, ``report.html`` (``evaluation.report.Report``) and ``results.json``; runs under ``<out>/runs``.

  python -m mrlearn.layerwise.study --preset cpu --out runs/layerwise_study
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrlearn.config import config_from_dict
from mrlearn.errors import input_error

MASKS = {
    "poisson": {"name": "poisson", "accelerations": [4], "calib": [16, 16]},
    "cartesian": {"name": "random", "accelerations": [4], "center_fractions": [0.04]},
}


@dataclass
class StudyOptions:
    """What the study runs (see the presets in :data:`PRESETS`)."""

    masks: list[str] = field(default_factory=lambda: ["poisson", "cartesian"])
    max_blocks: int = 5
    hidden: int = 256
    kernel_size: int = 7
    epochs: int = 10  # per end-to-end run and per greedy block
    lr: float = 1e-4
    lr_step_epochs: int = 10
    batch_size: int = 2
    convex_variants: list[str] = field(default_factory=lambda: ["gated", "relu"])
    num_patterns: int = 128
    beta: float = 1e-5
    patches_per_slice: int = 1000
    max_iter: int = 300
    gap_patterns: list[int] = field(default_factory=lambda: [4, 16, 64, 128])
    # embedded dataset
    anatomy: str = "phantom"
    matrix: list[int] = field(default_factory=lambda: [64, 64])
    slices: int = 4
    volumes: list[int] = field(default_factory=lambda: [6, 2, 2])
    coils: int = 8
    contrast: str = "PD"
    data_root: str | None = None  # a folder of fastMRI volumes instead of the embedded dataset
    memory_batch: int = 4
    seed: int = 0


PRESETS: dict[str, dict[str, Any]] = {
    # about 30-40 minutes on 2 CPU cores: the seed network (256 channels, 7 x 7, 5 blocks) on 64 x 64 phantom images
    "cpu": dict(epochs=6, lr=1e-3, lr_step_epochs=3, hidden=256, volumes=[6, 2, 2], slices=4, patches_per_slice=500,
                max_iter=100, num_patterns=64, gap_patterns=[4, 16, 64], convex_variants=["gated", "relu"]),
    # a few minutes: a narrower network, 3 blocks, fewer epochs (for a busy machine)
    "quick": dict(epochs=4, lr=1e-3, lr_step_epochs=4, hidden=64, max_blocks=3, volumes=[3, 1, 1], slices=4,
                  patches_per_slice=500, max_iter=100, num_patterns=64, gap_patterns=[4, 16, 64],
                  convex_variants=["gated", "relu"]),
    # the seed's schedule (GPU, real data via --data-root): 40 epochs, lr 1e-4 halved every 10 epochs, 320 x 320
    "seed": dict(epochs=40, lr=1e-4, lr_step_epochs=10, hidden=256, matrix=[320, 320], patches_per_slice=2000,
                 max_iter=500, num_patterns=128),
}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    _atomic_write(path, buf.getvalue())


def _save_fig(fig: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def dataset_root(opts: StudyOptions) -> Path:
    """The data: ``data_root`` or the embedded dataset for these options (built once, cached)."""
    if opts.data_root:
        return Path(opts.data_root)
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    sim = SimulationOptions(matrix=tuple(opts.matrix), slices=opts.slices, volumes=tuple(opts.volumes),
                            contrasts=(opts.contrast,), coils=opts.coils, anatomy=opts.anatomy, seed=opts.seed)
    return simulate_dataset(None, sim)


def base_config(opts: StudyOptions, root: Path, mask: str, out: Path, name: str, blocks: int,
                method: dict[str, Any], max_epochs: int, val_every: int):
    return config_from_dict({
        "name": name, "seed": opts.seed, "out_dir": str(out),
        "data": {"root": str(root), "batch_size": opts.batch_size, **({} if opts.data_root else {"contrasts": [opts.contrast]})},
        "mask": MASKS[mask],
        "model": {"name": "layerwise", "num_blocks": blocks, "hidden": opts.hidden, "kernel_size": opts.kernel_size},
        "method": {"loss": {"name": "l2"}, **method},
        "optim": {"name": "adam", "lr": opts.lr},
        "scheduler": None,
        "trainer": {"max_epochs": max_epochs, "accelerator": "auto", "progress_bar": False, "val_every": val_every,
                    "log_every_n_steps": 10},
    })


@torch.no_grad()
def depth_metrics(module, datamodule, depths: list[int]) -> tuple[dict[int, dict[str, float]], dict[int, np.ndarray], dict[str, np.ndarray]]:
    """Test-split fastMRI metrics of ``module``'s network truncated at each depth (0: the zero-filled input).

    Returns per-depth mean metrics over volumes, the first test slice's image per depth, and that slice's target
    and zero-filled magnitude.
    """
    from mrlearn.evaluation import metrics
    from mrlearn.physics.complex import channels_to_complex

    ds = datamodule.dataset("test")
    module = module.eval().cpu()
    per_vol: dict[int, dict[str, list]] = {d: {} for d in depths}
    targets: dict[str, list] = {}
    example: dict[int, np.ndarray] = {}
    extra: dict[str, np.ndarray] = {}
    for i in range(len(ds)):
        s = ds[i]
        x = s["image"].unsqueeze(0)
        targets.setdefault(s["fname"], []).append(s["target"][0].numpy())
        for d in depths:
            out = module.model(x, d) if d > 0 else x
            mag = (channels_to_complex(out)[0].abs() * s["std"]).numpy()
            per_vol[d].setdefault(s["fname"], []).append(mag)
            if i == 0:
                example[d] = mag
        if i == 0:
            extra["target"] = s["target"][0].numpy()
    out: dict[int, dict[str, float]] = {}
    for d in depths:
        vals = {"psnr": [], "ssim": [], "nmse": []}
        for fname, preds in per_vol[d].items():
            gt, pr = np.stack(targets[fname]), np.stack(preds)
            vals["psnr"].append(metrics.psnr(gt, pr))
            vals["ssim"].append(metrics.ssim(gt, pr))
            vals["nmse"].append(metrics.nmse(gt, pr))
        out[d] = {k: float(np.mean(v)) for k, v in vals.items()}
        out[d].update({f"{k}_std": float(np.std(v)) for k, v in vals.items() if k != "nmse"})
        out[d]["volumes"] = len(vals["psnr"])
    return out, example, extra


def gap_experiment(opts: StudyOptions, datamodule, variants: list[str]) -> list[dict[str, Any]]:
    """Block 1 on training patches: convex objective, recovered ReLU objective and gap vs sampled patterns."""
    from mrlearn.layerwise.convex import ConvexProblem, recover_relu_weights, relu_objective, sample_gates, solve_convex
    from mrlearn.layerwise.patches import patch_matrix, pixel_matrix

    ds = datamodule.dataset("train")
    gen = torch.Generator().manual_seed(opts.seed)
    Ys, Xs = [], []
    for i in range(len(ds)):
        s = ds[i]
        x, t = s["image"].unsqueeze(0), s["target_complex"].unsqueeze(0)
        Y, X = patch_matrix(x, opts.kernel_size), pixel_matrix(t - x)
        rows = torch.randperm(Y.shape[0], generator=gen)[: opts.patches_per_slice]
        Ys.append(Y[rows])
        Xs.append(X[rows])
    Y, X = torch.cat(Ys), torch.cat(Xs)
    rows_out = []
    for variant in variants:
        for P in opts.gap_patterns:
            g = torch.Generator().manual_seed(opts.seed + 1)
            H, G = sample_gates(Y, max(opts.gap_patterns), g)  # nested: the first P of the same filters
            prob = ConvexProblem(Y=Y, X=X, G=G[:, :P].contiguous(), beta=opts.beta, variant=variant, H=H[:, :P])
            t0 = time.perf_counter()
            U, hist, restarts, iters = solve_convex(prob, opts.max_iter, 1e-7)
            gw, fw = recover_relu_weights(U, variant, 2, opts.kernel_size)
            conv, relu = prob.objective(U), relu_objective(Y, X, gw, fw, opts.beta)
            rows_out.append({"variant": variant, "patterns": P, "convex_objective": conv, "relu_objective": relu,
                             "gap": relu - conv, "relative_gap": (relu - conv) / conv, "neurons": int(gw.shape[0]),
                             "cone_violation": prob.cone_violation(U), "iterations": iters, "restarts": restarts,
                             "identity_objective": 0.5 * float((X * X).sum()) / X.shape[0], "seconds": time.perf_counter() - t0})
    return rows_out


def run_study(opts: StudyOptions, out: str | Path, log=print) -> dict[str, Any]:
    """Run everything (see the module docstring); returns the results dict also written to ``results.json``."""
    from mrlearn.layerwise.memory import measure
    from mrlearn.layerwise.train import LayerwiseDataModule, train
    from mrlearn.training.runner import build_method

    for m in opts.masks:
        if m not in MASKS:
            raise input_error("study masks", f"unknown mask {m!r}", f"use {', '.join(MASKS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    root = dataset_root(opts)
    log(f"data: {root}")
    N = opts.max_blocks
    depths = list(range(0, N + 1))
    rows: list[dict[str, Any]] = []
    examples: dict[str, dict[str, np.ndarray]] = {}
    convex_logs: dict[str, Any] = {}
    gap_rows: list[dict[str, Any]] = []
    for mask in opts.masks:
        examples[mask] = {}
        runs = out / "runs" / mask

        def record(method: str, res_module, cfg, blocks: list[int], seconds: float, example_key: str | None):
            dm = LayerwiseDataModule(cfg, res_module)
            met, ex, extra = depth_metrics(res_module, dm, [0, *blocks])
            examples[mask].setdefault("target", extra["target"])
            examples[mask].setdefault("zero-filled", ex[0])
            if example_key:
                examples[mask][example_key] = ex[max(blocks)]
            for d in blocks:
                rows.append({"mask": mask, "method": method, "blocks": d, **met[d], "train_seconds": seconds})
            return met

        # end-to-end, one run per depth
        for d in range(1, N + 1):
            cfg = base_config(opts, root, mask, runs / f"end_to_end_{d}", f"e2e_{mask}_{d}", d,
                              {"name": "layerwise_end_to_end", "lr_step_epochs": opts.lr_step_epochs}, opts.epochs, opts.epochs)
            t0 = time.perf_counter()
            res = train(cfg)
            met = record("end_to_end", res.module, cfg, [d], time.perf_counter() - t0, "end-to-end" if d == N else None)
            log(f"[{mask}] end-to-end {d} blocks: PSNR {met[d]['psnr']:.2f} SSIM {met[d]['ssim']:.4f} ({time.perf_counter() - t0:.0f} s)")
            if d == 1:
                rows.append({"mask": mask, "method": "zero_filled", "blocks": 0, **met[0], "train_seconds": 0.0})
        # greedy
        cfg = base_config(opts, root, mask, runs / "greedy", f"greedy_{mask}", N,
                          {"name": "layerwise_greedy", "epochs_per_block": opts.epochs, "lr_step_epochs": opts.lr_step_epochs},
                          N * opts.epochs, opts.epochs)
        t0 = time.perf_counter()
        res = train(cfg)
        met = record("greedy", res.module, cfg, list(range(1, N + 1)), time.perf_counter() - t0, "greedy")
        log(f"[{mask}] greedy: " + ", ".join(f"{d}: {met[d]['psnr']:.2f}/{met[d]['ssim']:.4f}" for d in range(1, N + 1))
            + f" ({time.perf_counter() - t0:.0f} s)")
        # convex
        for variant in opts.convex_variants:
            cfg = base_config(opts, root, mask, runs / f"convex_{variant}", f"convex_{variant}_{mask}", N,
                              {"name": "layerwise_convex", "variant": variant, "num_patterns": opts.num_patterns,
                               "beta": opts.beta, "patches_per_slice": opts.patches_per_slice, "max_iter": opts.max_iter}, N, 1)
            t0 = time.perf_counter()
            res = train(cfg)
            met = record(f"convex_{variant}", res.module, cfg, list(range(1, N + 1)), time.perf_counter() - t0, f"convex ({variant})")
            convex_logs[f"{mask}/{variant}"] = res.module.convex_log
            log(f"[{mask}] convex {variant}: " + ", ".join(f"{d}: {met[d]['psnr']:.2f}/{met[d]['ssim']:.4f}" for d in range(1, N + 1))
                + f" ({time.perf_counter() - t0:.0f} s)")
        if mask == opts.masks[0]:
            module = build_method(cfg)
            gap_rows = gap_experiment(opts, LayerwiseDataModule(cfg, module), opts.convex_variants or ["gated"])
            log("gap vs patterns: " + "; ".join(f"{r['variant']} P={r['patterns']}: {r['relative_gap']:+.2e}" for r in gap_rows))
        partial = {"options": asdict(opts), "rows": rows, "gap": gap_rows, "memory": [], "convex_logs": convex_logs,
                   "total_seconds": time.perf_counter() - t_start}
        write_outputs(partial, examples, out)  # results so far (overwritten at the end)
    # memory of one training step at the study's size (fresh processes)
    size = tuple(examples[opts.masks[0]]["target"].shape)
    mem_rows = []
    for mode in ("end_to_end", "layerwise"):
        r = measure(mode, opts.memory_batch, size, "cuda" if torch.cuda.is_available() else "cpu", N, opts.hidden, opts.kernel_size)
        mem_rows.append({"mode": mode, "batch": opts.memory_batch, "size": f"{size[0]}x{size[1]}", "peak_mib": r.get("peak_mib", float("nan"))})
    results = {"options": asdict(opts), "rows": rows, "gap": gap_rows, "memory": mem_rows, "convex_logs": convex_logs,
               "total_seconds": time.perf_counter() - t_start}
    write_outputs(results, examples, out)
    log(f"study done in {results['total_seconds'] / 60:.1f} min: {out / 'report.html'}")
    return results


def summary_rows(rows: list[dict[str, Any]], N: int) -> list[dict[str, Any]]:
    """Gap of each layer-wise method to end-to-end at ``N`` blocks, per mask."""
    out = []
    for mask in sorted({r["mask"] for r in rows}):
        ref = [r for r in rows if r["mask"] == mask and r["method"] == "end_to_end" and r["blocks"] == N]
        if not ref:
            continue
        for r in rows:
            if r["mask"] == mask and r["blocks"] == N and r["method"] not in ("end_to_end", "zero_filled"):
                out.append({"mask": mask, "method": r["method"], "psnr": r["psnr"], "ssim": r["ssim"],
                            "psnr_gap_db": ref[0]["psnr"] - r["psnr"], "ssim_gap": ref[0]["ssim"] - r["ssim"],
                            "meets_seed_target": bool(ref[0]["psnr"] - r["psnr"] <= 0.3 and ref[0]["ssim"] - r["ssim"] <= 0.003)})
    return out


def write_outputs(results: dict[str, Any], examples: dict[str, dict[str, np.ndarray]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mrlearn.evaluation.report import Report

    rows, N = results["rows"], results["options"]["max_blocks"]
    _write_csv(out / "results.csv", rows)
    _write_csv(out / "gap.csv", results["gap"]) if results["gap"] else None
    if results["memory"]:
        _write_csv(out / "memory.csv", results["memory"])
    summary = summary_rows(rows, N)
    _atomic_write(out / "results.json", json.dumps({**results, "summary": summary}, indent=1, default=float))
    report = Report("Layer-wise vs end-to-end training (seed 001)")
    o = results["options"]
    report.add_text(
        f"Embedded dataset ({o['anatomy']}, {o['matrix'][0]} x {o['matrix'][1]}, {o['coils']} coils, volumes "
        f"train/val/test {o['volumes']} x {o['slices']} slices, contrast {o['contrast']}). Network: blocks "
        f"x + f(relu(g(x))), g {o['kernel_size']} x {o['kernel_size']} with {o['hidden']} channels. End-to-end: one "
        f"run per depth, {o['epochs']} epochs; greedy: {o['epochs']} epochs per block; Adam lr {o['lr']:g} halved "
        f"every {o['lr_step_epochs']} epochs (per block for greedy). Convex: {o['num_patterns']} sampled patterns, "
        f"beta {o['beta']:g}, {o['patches_per_slice']} patches per slice, FISTA {o['max_iter']} iterations. Metrics: "
        f"fastMRI PSNR/SSIM per test volume (magnitude), mean over volumes. Total time "
        f"{results['total_seconds'] / 60:.1f} min.", title="Setup")
    report.add_table("Gap to end-to-end at the full depth (seed target: <= 0.3 dB PSNR, <= 0.003 SSIM)", summary)
    for metric in ("psnr", "ssim"):
        fig, axes = plt.subplots(1, len(examples), figsize=(5 * len(examples), 3.6), squeeze=False)
        for ax, mask in zip(axes[0], examples):
            for method in sorted({r["method"] for r in rows if r["mask"] == mask and r["method"] != "zero_filled"}):
                pts = sorted((r["blocks"], r[metric]) for r in rows if r["mask"] == mask and r["method"] == method)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
            zf = [r[metric] for r in rows if r["mask"] == mask and r["method"] == "zero_filled"]
            if zf:
                ax.axhline(zf[0], color="grey", ls=":", label="zero-filled")
            ax.set_title(f"{mask} 4x")
            ax.set_xlabel("blocks")
            ax.set_ylabel(metric.upper())
            ax.legend(fontsize=7)
        _save_fig(fig, out / f"fig_{metric}_vs_blocks.png")
        report.add_figure(f"{metric.upper()} after each added block (seed Fig. 2)", fig)
        plt.close(fig)
    fig, axes = plt.subplots(len(examples), max(len(v) for v in examples.values()), figsize=(14, 3 * len(examples)), squeeze=False)
    for ax_row, (mask, imgs) in zip(axes, examples.items()):
        vmax = float(imgs["target"].max()) or 1.0
        for ax, (name, img) in zip(ax_row, imgs.items()):
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(f"{mask}: {name}", fontsize=8)
            ax.axis("off")
        for ax in ax_row[len(imgs):]:
            ax.axis("off")
    _save_fig(fig, out / "fig_examples.png")
    report.add_figure("Example test slice (seed Fig. 3)", fig)
    plt.close(fig)
    report.add_table("PSNR / SSIM per method and depth (test split)", rows,
                     ["mask", "method", "blocks", "psnr", "ssim", "nmse", "psnr_std", "ssim_std", "volumes", "train_seconds"])
    if results["gap"]:
        report.add_table("Convex gap vs sampled patterns (block 1, training patches)", results["gap"],
                         caption="gap = recovered ReLU block objective - convex objective; gated: the ReLU recovery "
                                 "of a gated solution (the gated block itself has exactly the convex objective); "
                                 "relu: cone constraints by penalty, gap from the remaining violation.")
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for variant in sorted({r["variant"] for r in results["gap"]}):
            pts = [(r["patterns"], r["convex_objective"], r["relu_objective"]) for r in results["gap"] if r["variant"] == variant]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{variant}: convex")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], marker="x", ls="--", label=f"{variant}: recovered ReLU")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sampled sign patterns")
        ax.set_ylabel("objective")
        ax.legend(fontsize=7)
        _save_fig(fig, out / "fig_gap_vs_patterns.png")
        report.add_figure("Convex vs recovered objective", fig)
        plt.close(fig)
    logs = [{"run": k, **e} for k, v in results["convex_logs"].items() for e in v]
    if logs:
        report.add_table("Convex solves per block", logs)
    if results["memory"]:
        report.add_table("Peak memory of one training step (seed Fig. 4; full sweep: benchmarks/layerwise_memory.py)",
                         results["memory"])
    report.write(out, "report.html")


def main(argv: list[str] | None = None) -> int:
    import sys

    from mrlearn.errors import MrlearnError

    p = argparse.ArgumentParser(prog="python -m mrlearn.layerwise.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--out", default="runs/layerwise_study")
    p.add_argument("--masks", nargs="+", default=None, help="poisson and/or cartesian")
    p.add_argument("--data-root", default=None, help="fastMRI folder with train/val/test (default: embedded dataset)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for this process")
    p.add_argument("--convex", nargs="+", default=None, help="convex variants to run (gated, relu)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # command-line entry point, not library code
    opts = replace(StudyOptions(), **PRESETS[args.preset])
    if args.masks:
        opts.masks = list(args.masks)
    if args.data_root:
        opts.data_root = args.data_root
    if args.convex:
        opts.convex_variants = list(args.convex)
    try:
        run_study(opts, args.out)
    except MrlearnError as exc:
        print(f"mrlearn: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
