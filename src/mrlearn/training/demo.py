"""The demo study: several methods on the embedded dataset's test volumes -> ``report.html`` + ``metrics.csv``.

A demo config (``configs/demo.yaml``) lists methods; each is classical (``recon: <name>``, a registry ``recon``
entry, e.g. ``zero-filled``, ``cg-sense``, ``cs-l1``) or learned (``config: <experiment YAML or shipped name>`` plus ``set``
overrides), so later capabilities only add entries. Learned methods are trained on the embedded dataset's
``train``/``val`` volumes of ``contrast`` with the demo's ``mask`` and evaluated, like the classical ones, on
the ``test`` volumes with masks fixed per file. Metrics are fastMRI's per volume (NMSE, PSNR, SSIM with the
target volume's maximum as data range); the report shows their mean +- std over volumes, a figure of
target / each method / error maps for ``figure_slices`` test slices, and the learned methods' training curves.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrlearn import registry
from mrlearn.config import _to_dataclass, load_config, resolve_config_path
from mrlearn.errors import input_error
from mrlearn.io import atomic_write_text


@dataclass
class DemoMethod:
    """One row of the comparison: ``recon`` (classical name) or ``config`` (learned; ``set`` overrides,
    ``quick_set`` extra overrides under ``--quick``, e.g. a smaller network)."""

    label: str
    recon: str | None = None
    config: str | None = None
    set: list[str] = field(default_factory=list)
    quick_set: list[str] = field(default_factory=list)


@dataclass
class DemoConfig:
    """The demo study (see the module docstring). ``simulation``: ``SimulationOptions`` fields ({} = defaults)."""

    title: str = "mrlearn demo: accelerated MRI reconstruction on the embedded dataset"
    simulation: dict[str, Any] = field(default_factory=dict)
    contrast: str = "PD"
    mask: dict[str, Any] = field(default_factory=lambda: {"name": "random", "accelerations": [4], "center_fractions": [0.08]})
    methods: list[DemoMethod] = field(default_factory=list)
    figure_slices: int = 3
    quick: dict[str, Any] = field(default_factory=dict)


def load_demo_config(path: str | Path, quick: bool = False) -> DemoConfig:
    """Read a demo YAML; ``quick`` applies its ``quick`` block (``simulation``, evaluation ``mask``, ``set`` for
    every learned method, ``figure_slices``) and each method's ``quick_set``."""
    import yaml

    p = resolve_config_path(path)
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict):
        raise input_error(p, "the top level must be a mapping", "see configs/demo.yaml")
    methods = raw.pop("methods", None) or []
    if not isinstance(methods, list):
        raise input_error(f"{p}: methods", "expected a list", "write one '- label: ...' item per method")
    cfg = _to_dataclass(DemoConfig, raw, "")
    for i, m in enumerate(methods):
        item = _to_dataclass(DemoMethod, m, f"methods[{i}]")
        if (item.recon is None) == (item.config is None):
            raise input_error(f"methods[{i}]", "needs exactly one of 'recon' or 'config'", "classical: recon: zero-filled; learned: config: unet_demo")
        cfg.methods.append(item)
    if not cfg.methods:
        raise input_error(p, "no methods listed", "add at least one method")
    if quick and cfg.quick:
        q = dict(cfg.quick)
        cfg.simulation = {**cfg.simulation, **(q.get("simulation") or {})}
        cfg.mask = q.get("mask", cfg.mask)
        for m in cfg.methods:
            if m.config is not None:
                m.set = list(m.set) + list(q.get("set") or []) + list(m.quick_set)
        cfg.figure_slices = int(q.get("figure_slices", cfg.figure_slices))
    registry.validate("mask", cfg.mask, "mask")
    return cfg


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_").lower() or "method"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_dataset(cfg: DemoConfig) -> Path:
    """The embedded dataset with ``cfg.simulation`` options (cached by option hash)."""
    from mrlearn.data.simulate import SimulationOptions, default_dataset

    try:
        options = SimulationOptions(**cfg.simulation)
    except TypeError as exc:
        raise input_error("demo simulation", str(exc), "use SimulationOptions fields (matrix, slices, volumes, ...)") from None
    if cfg.contrast not in options.contrasts:
        raise input_error("demo contrast", f"{cfg.contrast!r} is not simulated", f"choose one of {', '.join(options.contrasts)}")
    return default_dataset(options, log=_say)


def train_learned(method: DemoMethod, cfg: DemoConfig, root: Path, out: Path) -> tuple[Any, Any]:
    """Train a learned method of the demo; returns (experiment config, TrainResult)."""
    from mrlearn.training.runner import train

    run_dir = out / "runs" / _slug(method.label)
    if run_dir.exists():
        if not (run_dir / "run.json").is_file():
            raise input_error(run_dir, "exists and is not an mrlearn run folder", "remove it or choose another --out")
        shutil.rmtree(run_dir)  # a previous demo run of this method: retrain from scratch
    import yaml

    overrides = [f"data.root={root}", f"data.contrasts=[{cfg.contrast}]", f"out_dir={run_dir}",
                 f"mask={yaml.safe_dump(cfg.mask, default_flow_style=True).strip()}", *method.set]
    exp = load_config(method.config, overrides)
    return exp, train(exp)


def evaluate_method(predict: Any, dataset: Any, label: str, keep: set[tuple[str, int]]) -> tuple[dict, dict, dict]:
    """Per-volume metrics, kept slices ``(fname, slice) -> image`` (prediction, target, zero-filled)."""
    from mrlearn.training.inference import iterate_volumes
    from mrlearn.evaluation.scoring import volume_metrics

    results, images, targets = {}, {}, {}
    for fname, pred, target, _zf in iterate_volumes(dataset, predict, batch_size=1, label=f"evaluate {label}"):
        if target is None:
            raise input_error(fname, "test volume has no target", "the demo needs fully sampled test volumes")
        results[fname] = volume_metrics(target, pred)
        for f, s in keep:
            if f == fname:
                images[(f, s)] = pred[s]
                targets[(f, s)] = target[s]
    return results, images, targets


def pick_slices(dataset: Any, n: int) -> list[tuple[str, int]]:
    """``n`` test slices for the figure: the middle slice of the first ``n`` volumes (more from one if needed)."""
    keys = [dataset.slices.sample_key(i) for i in range(len(dataset.slices))]
    by_vol: dict[str, list[int]] = {}
    for f, s in keys:
        by_vol.setdefault(f, []).append(s)
    names = sorted(by_vol)
    chosen: list[tuple[str, int]] = []
    for offset in (0, -1, 1, -2, 2):
        for name in names:
            sl = sorted(by_vol[name])
            idx = len(sl) // 2 + offset
            if 0 <= idx < len(sl) and (name, sl[idx]) not in chosen and len(chosen) < n:
                chosen.append((name, sl[idx]))
    return chosen


def comparison_figure(slices: list[tuple[str, int]], targets: dict, images: dict[str, dict]) -> Any:
    """Rows: slices; columns: target, each method, each method's |error| (x5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(images)
    ncol = 1 + 2 * len(labels)
    fig, axes = plt.subplots(len(slices), ncol, figsize=(2.1 * ncol, 2.2 * len(slices)), squeeze=False)
    for r, key in enumerate(slices):
        target = targets[key]
        vmax = float(target.max()) or 1.0
        panels = [("target", target, vmax)] + [(lab, images[lab][key], vmax) for lab in labels]
        panels += [(f"|error| x5 {lab}", np.abs(images[lab][key] - target), vmax / 5) for lab in labels]
        for c, (title, img, vm) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=vm)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
        axes[r, 0].set_ylabel(f"{key[0]}\nslice {key[1]}", fontsize=7)
    fig.tight_layout()
    return fig


def curves_figure(histories: dict[str, list[dict[str, float]]]) -> Any:
    """Training loss and validation PSNR/SSIM per epoch of each learned method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for label, hist in histories.items():
        for ax, key in zip(axes, ("train_loss", "val_psnr", "val_ssim")):
            pts = [(h["epoch"] + 1, h[key]) for h in hist if key in h]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=label)
    for ax, title in zip(axes, ("training loss", "validation PSNR (dB)", "validation SSIM")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def summary_rows(per_method: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """Mean +- std over volumes per method."""
    rows = []
    for label, res in per_method.items():
        row: dict[str, Any] = {"method": label, "volumes": len(res)}
        for key, digits in (("nmse", 4), ("psnr", 2), ("ssim", 4)):
            v = np.array([r[key] for r in res.values()])
            row[key.upper()] = f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"
        rows.append(row)
    return rows


def run_demo(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    """Run the demo study into ``out``; returns a summary (paths, per-method means, timings)."""
    from mrlearn.evaluation.report import Report
    from mrlearn.training.inference import classical_predictor, eval_dataset, module_predictor

    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _say("demo: building (or reusing) the embedded dataset ...")
    root = build_dataset(cfg)
    t_data = time.perf_counter() - t_start
    mask_func = registry.build("mask", cfg.mask, "mask")
    per_method: dict[str, dict[str, dict[str, float]]] = {}
    images: dict[str, dict] = {}
    histories: dict[str, list] = {}
    timings: dict[str, float] = {}
    targets: dict = {}
    slices: list[tuple[str, int]] = []
    for method in cfg.methods:
        t0 = time.perf_counter()
        if method.config is not None:
            _say(f"demo: training {method.label} ...")
            exp, result = train_learned(method, cfg, root, out)
            histories[method.label] = result.history
            predict = module_predictor(result.module, "cpu")
            recon_size = tuple(exp.data.recon_size) if exp.data.recon_size else None
            dataset = eval_dataset(root / exp.data.test, mask_func, recon_size, result.module.keep_kspace, [cfg.contrast])
        else:
            predict = classical_predictor(method.recon)
            dataset = eval_dataset(root / "test", mask_func, None, True, [cfg.contrast])
        if not slices:
            slices = pick_slices(dataset, cfg.figure_slices)
        res, imgs, tgts = evaluate_method(predict, dataset, method.label, set(slices))
        per_method[method.label], images[method.label] = res, imgs
        targets.update(tgts)
        timings[method.label] = time.perf_counter() - t0
    # metrics.csv: one row per method and volume
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "volume", "nmse", "psnr", "ssim"])
    for label, res in per_method.items():
        for vol, m in res.items():
            writer.writerow([label, vol, f"{m['nmse']:.6g}", f"{m['psnr']:.6g}", f"{m['ssim']:.6g}"])
    csv_path = atomic_write_text(out / "metrics.csv", buf.getvalue())
    means = {label: {k: float(np.mean([r[k] for r in res.values()])) for k in ("nmse", "psnr", "ssim")}
             for label, res in per_method.items()}
    total = time.perf_counter() - t_start
    report = Report(cfg.title)
    mask_txt = ", ".join(f"{k}={v}" for k, v in cfg.mask.items() if k != "name")
    report.add_text(f"Embedded dataset at {root} (contrast {cfg.contrast}); test volumes: "
                    f"{len(next(iter(per_method.values())))}. Undersampling: {cfg.mask['name']} mask ({mask_txt}), "
                    "fixed per test volume. Metrics are fastMRI's, per volume (NMSE, PSNR and SSIM with the target "
                    "volume maximum as data range), shown as mean ± standard deviation over volumes.", title="Setup")
    report.add_table("Metrics (test volumes)", summary_rows(per_method))
    report.add_table("Run time", [{"step": "dataset", "seconds": round(t_data, 1)}] +
                     [{"step": k, "seconds": round(v, 1)} for k, v in timings.items()] + [{"step": "total", "seconds": round(total, 1)}])
    if slices and targets:
        report.add_figure("Examples", comparison_figure(slices, targets, images),
                          caption="Target, reconstructions and absolute error maps (x5) on test slices; same grey scale per row.")
    if histories:
        report.add_figure("Training curves", curves_figure(histories), caption="Per epoch; validation on the val volumes.")
    import matplotlib.pyplot as plt

    plt.close("all")
    report_path = report.write(out)
    return {"report": report_path, "metrics_csv": csv_path, "means": means, "seconds": total, "dataset": root,
            "runs": {label: out / "runs" / _slug(label) for label in histories}}
