"""The demo: a study (``configs/demo.yaml``) run by the one study runner, plus the demo's report and ``metrics.csv``.

``configs/demo.yaml`` is an ordinary study file: every arm is one method on the embedded dataset's PD test volumes
with the masks fixed per file, classical (``method: {name: reference, recon: <classical method>}``, evaluated
without training) or learned (trained on ``train``/``val`` through the engine, scored with its best checkpoint by
validation). Its runner is :func:`study_runner`; ``mrlearn study demo`` runs it like any study (``study.csv``,
``report.html``). ``mrlearn demo`` (:func:`run_demo`) is a thin preset over it: it builds (or reuses) the dataset,
runs the study, then writes

* ``metrics.csv``: one row per method (arm) and test volume: ``method, volume, nmse, psnr, ssim``;
* ``report.html``: the demo report - metrics (mean ± sample std, ddof = 1, over test volumes, with each learned arm's
  convergence status), run times, example slices (target, each method with that slice's PSNR/SSIM, each method's
  error map, all error maps on one colour scale with a colour bar) and the learned arms' training curves (best and
  stop points marked, one axis per kind of loss: ``evaluation.figures``); the generic study report is kept as
  ``study_report.html``.

``--quick`` (:data:`QUICK`): a tiny phantom dataset, an evaluation mask with 16 ACS lines and tiny networks (U-Net
at most 30 epochs: it stops early after about 16 and beats zero-filled, 19.26 dB with 2 threads and 19.45 dB with 1
against 19.10 dB, SSIM 0.69-0.71 against 0.66, measured; unrolled 10 epochs: 19.57 dB); about 40 s on 2 idle
cores (36 s measured), most of it the CS arm. Its default folder is ``runs/demo_quick`` so a quick run never passes for the full
demo's finished runs. Its summary says what it is for (:data:`QUICK_NOTE`).

Metrics are fastMRI's per volume (NMSE, PSNR, SSIM with the target volume's maximum as data range).
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mrlearn import registry
from mrlearn.errors import input_error
from mrlearn.io import atomic_write_text
from mrlearn.progress import Ticker

#: ``--quick``: dataset options and overrides of the demo study (tiny networks, short budgets)
QUICK: dict[str, Any] = {
    "simulation": {"anatomy": "phantom", "matrix": [64, 64], "slices": 4, "subjects": [3, 1, 2], "contrasts": ["PD"],
                   "coils": 4},
    "set": ["mask={name: random, accelerations: [4], center_fractions: [0.25]}",  # 16 ACS lines: ESPIRiT well posed
            "trainer.progress_bar=false", "data.batch_size=2",
            "arms.U-Net.model.chans=4", "arms.U-Net.model.num_pool_layers=2", "arms.U-Net.trainer.max_epochs=30",
            "arms.U-Net.trainer.val_every=1",
            "arms.unrolled.model.cascades=2", "arms.unrolled.model.chans=4", "arms.unrolled.model.num_blocks=1",
            "arms.unrolled.trainer.max_epochs=10"],
}
#: what ``--quick`` is for, printed with its results
QUICK_NOTE = ("--quick is a smoke test: tiny phantom data (64 x 64, 3 training volumes) and tiny networks (U-Net at "
              "most 30 epochs, unrolled 10, the demo's early stopping); its numbers show that every step runs, not what "
              "the methods can do (run `mrlearn demo` for that)")
EXAMPLE_SLICES = 3  # test slices shown per method (middle slice of the first volumes)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- the study runner
@registry.register("runner", "demo")
def study_runner(cfg: Any, resume: bool = False) -> Any:
    """Runner of the demo study: evaluate a ``reference`` arm, or train a learned one; score the test volumes.

    Returns the per-volume means (group ``all``), per-slice rows, example slices (one example group per shown
    slice) and, in ``extra``, the per-volume metrics (``volumes``) and the training history. ``resume``: continue an
    interrupted learned arm from its ``checkpoints/last.ckpt`` with the exact state (``training.runner.train``); a
    reference arm trains nothing and is scored again.
    """
    from mrlearn.evaluation.scoring import mean_metrics, slice_metrics, volume_metrics
    from mrlearn.study.runner import RunOutcome
    from mrlearn.training.data import resolve_root
    from mrlearn.training.inference import eval_dataset, iterate_volumes, module_predictor

    root = resolve_root(cfg)
    mask_func = registry.build("mask", {k: v for k, v in cfg.mask.items() if k != "fixed_per_slice"}, "mask")
    contrasts = list(cfg.data.contrasts) if cfg.data.contrasts else None
    extra: dict[str, Any] = {}
    reference = None
    if cfg.method.get("name") == "reference":
        from mrlearn.training.runner import build_method

        reference = build_method(cfg)  # the reference method checks recon and its options
        predict = reference.reconstruct
        dataset = eval_dataset(root / cfg.data.test, mask_func, None, True, contrasts)
    else:
        from mrlearn.training.runner import train

        result = train(cfg, resume=resume)  # the module holds the evaluated weights (best checkpoint by validation)
        predict = module_predictor(result.module, "cpu")
        recon_size = tuple(cfg.data.recon_size) if cfg.data.recon_size else None
        dataset = eval_dataset(root / cfg.data.test, mask_func, recon_size, result.module.keep_kspace, contrasts)
        extra["history"] = [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in result.history]
    shown = set(pick_slices(dataset, EXAMPLE_SLICES))
    volumes, slices, examples = {}, [], {}
    ticker, done = Ticker("scoring the test volumes"), 0
    for fname, pred, target, zf in iterate_volumes(dataset, predict, batch_size=1, progress=False):
        done += len(pred)
        ticker.update("slice", done, len(dataset), [f"volume {len(volumes) + 1}"])
        if target is None:
            raise input_error(fname, "test volume has no target", "the demo needs fully sampled test volumes")
        volumes[fname] = volume_metrics(target, pred)
        slices += [{"group": "all", "fname": fname, "slice": s, **row} for s, row in enumerate(slice_metrics(target, pred))]
        for f, s in sorted(shown):
            if f == fname:
                examples[f"{Path(f).stem}_slice{s}"] = {"target": target[s], "input": zf[s], "output": pred[s],
                                                        "maxval": np.float64(target.max())}  # the metrics' range
    extra["volumes"] = volumes
    record = reference.solver_record() if reference is not None else None
    if record is not None:  # an iterative classical method: how its solver stopped
        extra["convergence"] = record
    return RunOutcome(groups={"all": mean_metrics(volumes.values())}, slices=slices, examples=examples, extra=extra)


def pick_slices(dataset: Any, n: int) -> list[tuple[str, int]]:
    """``n`` test slices: the middle slice of the first ``n`` volumes (neighbouring slices when fewer volumes)."""
    keys = [dataset.slices.sample_key(i) for i in range(len(dataset.slices))]
    by_vol: dict[str, list[int]] = {}
    for f, s in keys:
        by_vol.setdefault(f, []).append(s)
    chosen: list[tuple[str, int]] = []
    for offset in (0, -1, 1, -2, 2):
        for name in sorted(by_vol):
            sl = sorted(by_vol[name])
            idx = len(sl) // 2 + offset
            if 0 <= idx < len(sl) and (name, sl[idx]) not in chosen and len(chosen) < n:
                chosen.append((name, sl[idx]))
    return chosen


# ---------------------------------------------------------------------------------------------- the preset
def build_dataset(simulation: dict[str, Any] | None = None) -> Path:
    """The embedded dataset with ``simulation`` options (``SimulationOptions`` fields; cached by option hash)."""
    from mrlearn.data.simulate import SimulationOptions, default_dataset

    try:
        options = SimulationOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in (simulation or {}).items()})
    except TypeError as exc:
        raise input_error("demo simulation", str(exc), "use SimulationOptions fields (matrix, slices, volumes, ...)") from None
    return default_dataset(options, log=_say)


def run_demo(out: str | Path | None = None, quick: bool = False, config: str | Path = "demo",
             overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the demo study into ``out`` (default ``runs/demo``, ``runs/demo_quick`` with ``quick``), then write
    ``metrics.csv`` and the demo ``report.html``; returns paths, per-method means and timings."""
    from mrlearn.study import load_study, run_study

    out = Path(out or ("runs/demo_quick" if quick else "runs/demo"))
    t0 = time.perf_counter()
    _say("demo: building (or reusing) the embedded dataset ...")
    root = build_dataset(QUICK["simulation"] if quick else None)
    t_data = time.perf_counter() - t0
    sets = [f"data.root={root}", *(QUICK["set"] if quick else []), *overrides]
    spec = load_study(config, sets)
    out = run_study(spec, out, log=_say)
    study_report = out / "report.html"
    if study_report.is_file():
        study_report.replace(out / "study_report.html")
    results = {run.arm: _read_run(out / "runs" / run.run_id) for run in spec.runs() if run.seed == spec.seeds[0]}
    results = {arm: r for arm, r in results.items() if r is not None}
    csv_path = write_metrics_csv(out / "metrics.csv", results)
    total = time.perf_counter() - t0
    report = demo_report(spec, results, root, t_data, total)
    means = {arm: {k: float(np.mean([v[k] for v in r["volumes"].values()])) for k in ("nmse", "psnr", "ssim")}
             for arm, r in results.items()}
    learned = {arm: out / "runs" / r["run_id"] for arm, r in results.items() if r["history"]}
    return {"report": report.write(out), "metrics_csv": csv_path, "means": means, "seconds": total, "dataset": root,
            "runs": learned, "quick": quick, "convergence": {arm: r["convergence"] for arm, r in results.items()}}


def _read_run(run_dir: Path) -> dict[str, Any] | None:
    from mrlearn.study.results import read_result

    result = read_result(run_dir)
    if result is None:
        return None
    examples = {}
    if (run_dir / "examples.npz").is_file():
        with np.load(run_dir / "examples.npz") as data:
            examples = {key: data[key] for key in data.files}
    extra = result.get("extra") or {}
    return {"run_id": result["run_id"], "volumes": extra.get("volumes", {}), "history": extra.get("history", []),
            "seconds": result.get("seconds"), "convergence": (result.get("convergence") or {}).get("all") or {},
            "examples": examples, "method": _method_name(result.get("config"))}


def _method_name(config_text: Any) -> str | None:
    """The ``method.name`` of a run's resolved config (YAML text in ``result.json``), None when absent."""
    import yaml

    try:
        cfg = yaml.safe_load(config_text) if isinstance(config_text, str) else None
    except yaml.YAMLError:
        return None
    method = cfg.get("method") if isinstance(cfg, dict) else None
    return str(method.get("name")) if isinstance(method, dict) and method.get("name") else None


def write_metrics_csv(path: Path, results: dict[str, dict[str, Any]]) -> Path:
    """``method, volume, nmse, psnr, ssim``: one row per method and test volume."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "volume", "nmse", "psnr", "ssim"])
    for arm, r in results.items():
        for vol, m in r["volumes"].items():
            writer.writerow([arm, vol, f"{m['nmse']:.6g}", f"{m['psnr']:.6g}", f"{m['ssim']:.6g}"])
    return atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------- the demo report
def convergence_text(record: dict[str, Any], learned: bool) -> str:
    """What the report says about a run's training: ``-`` (classical, not iterative), how an iterative classical
    solver stopped, converged, or NOT converged and why."""
    if not learned:
        by = record.get("stopped_by")
        if by == "tolerance":
            return f"not trained; solver met its tolerance ({record.get('steps')} iterations)"
        if by == "max_iter":
            return (f"not trained; solver stopped at its iteration cap ({record.get('steps')} iterations, "
                    f"{record.get('monitor')} {record.get('best_score'):.2g}): not the minimiser")
        return "- (not trained)"
    steps, best, by = record.get("steps"), record.get("best_step"), record.get("stopped_by")
    where = f"{steps} steps, best at step {best}, stopped by {by}"
    if record.get("converged"):
        return f"converged ({where})"
    return f"NOT converged: still improving when stopped ({where})"


def summary_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sample std (``ddof = 1``) over test volumes per method, and its convergence status."""
    from mrlearn.evaluation.spread import mean_std, pm

    rows = []
    for arm, r in results.items():
        row: dict[str, Any] = {"method": arm, "volumes": len(r["volumes"])}
        for key, digits in (("nmse", 4), ("psnr", 2), ("ssim", 4)):
            row[key.upper()] = pm(*mean_std([m[key] for m in r["volumes"].values()]), digits)
        row["training"] = convergence_text(r["convergence"], bool(r["history"]))
        rows.append(row)
    return rows


#: what each method's training loss measures (its curve's axis); other methods get an axis named after them
LOSS_KINDS = {"supervised": "image domain (input-normalised units)",
              "supervised_kspace": "image domain (|image| / k-space scale)",
              "ssdu": "k-space (held-out locations)", "ssl_distill": "image domain (teacher vs student)"}


def example_slices(results: dict[str, dict[str, Any]]) -> list[Any]:
    """Per shown slice: the target and each method's image, with the target volume's max as the metrics' range."""
    from mrlearn.evaluation.figures import ExampleSlice

    shown = []
    groups = sorted({key.split("/", 1)[0] for r in results.values() for key in r["examples"]})
    for group in groups:
        found = [r["examples"] for r in results.values() if f"{group}/target" in r["examples"]]
        if not found:
            continue
        maxval = found[0].get(f"{group}/maxval")
        outputs = [(arm, r["examples"][f"{group}/output"]) for arm, r in results.items() if f"{group}/output" in r["examples"]]
        shown.append(ExampleSlice(group, found[0][f"{group}/target"], outputs,
                                  None if maxval is None else float(maxval)))
    return shown


def training_curves(results: dict[str, dict[str, Any]]) -> list[Any]:
    """The learned arms' curves: loss kind from the method, best step and stop from the convergence record."""
    from mrlearn.evaluation.figures import Curve

    curves = []
    for arm, r in results.items():
        if not r["history"]:
            continue
        conv, method = r["convergence"], r.get("method")
        curves.append(Curve(arm, r["history"], LOSS_KINDS.get(method or "", f"{method or arm} loss"),
                            conv.get("best_step"), conv.get("steps"), conv.get("stopped_by")))
    return curves


def demo_report(spec: Any, results: dict[str, dict[str, Any]], root: Path, t_data: float, total: float) -> Any:
    """The demo's HTML report (see the module docstring)."""
    from mrlearn.evaluation.report import Report
    from mrlearn.evaluation.spread import std_note

    report = Report(spec.description.splitlines()[0] if spec.description else f"mrlearn demo ({spec.name})")
    n_vol = len(next(iter(results.values()))["volumes"]) if results else 0
    report.add_text(f"Dataset: {root} ({n_vol} test volumes). Every method is scored on the same test volumes with "
                    "the same undersampling masks, fixed per file. Learned methods were trained on the train volumes "
                    "and are scored with their best checkpoint by validation. Metrics are fastMRI's, per volume (NMSE, "
                    "PSNR and SSIM with the target volume maximum as data range), shown as mean ± std over volumes; "
                    f"{std_note('test volumes')} The generic study report (paired differences, intervals) is "
                    "study_report.html.",
                    title="Setup")
    report.add_table("Metrics (test volumes)", summary_rows(results), caption=std_note("test volumes"))
    report.add_table("Run time", [{"step": "dataset", "seconds": round(t_data, 1)}] +
                     [{"step": arm, "seconds": r["seconds"]} for arm, r in results.items()] +
                     [{"step": "total", "seconds": round(total, 1)}])
    shown = example_slices(results)
    if shown:
        import matplotlib.pyplot as plt

        from mrlearn.evaluation.figures import example_figure

        report.add_figure("Examples", example_figure(shown),
                          caption="Test slices: target and each method on one grey scale per row, with the PSNR and "
                          "SSIM of that slice under each method (data range: the target volume's maximum, as in the "
                          "metrics table; the slice's own maximum for runs that did not record it). Below, each "
                          "method's absolute error; all error maps share one colour scale "
                          "(colour bar at the bottom right), so a darker map is a smaller error.")
        plt.close("all")
    curves = training_curves(results)
    if curves:
        import matplotlib.pyplot as plt

        from mrlearn.evaluation.figures import curves_figure

        report.add_figure("Training curves", curves_figure(curves),
                          caption="Training loss per epoch (one axis per kind of loss: losses of different methods are "
                          "not in the same units) and validation metrics on the val volumes, against optimiser steps. "
                          "Star: the best validation (the weights scored); cross: where training stopped, and why.")
        plt.close("all")
    return report


def print_summary(summary: dict[str, Any]) -> None:
    """The command's closing lines: per-method means, convergence of the learned ones, where the outputs are."""
    print(f"mrlearn demo: finished in {summary['seconds']:.0f} s")
    for label, m in summary["means"].items():
        conv = summary["convergence"].get(label) or {}
        note = "" if label not in summary["runs"] else ("  converged" if conv.get("converged") else "  NOT converged")
        print(f"  {label:<14} NMSE {m['nmse']:.4f}  PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}{note}")
    if summary.get("quick"):
        print(f"  note: {QUICK_NOTE}")
    print(f"  report:  {summary['report']}")
    print(f"  metrics: {summary['metrics_csv']}")
    for label, run_dir in summary["runs"].items():
        print(f"  {label} run: {run_dir}")


__all__ = ["QUICK", "QUICK_NOTE", "build_dataset", "run_demo", "study_runner", "write_metrics_csv", "demo_report", "print_summary"]
