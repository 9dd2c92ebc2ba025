"""``mrlearn qmri study``: config -> run folder with config.yaml, run.json, networks, tables, figures, report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from mrlearn.config import dump_config, load_config
from mrlearn.errors import input_error
from mrlearn.training.runfiles import RunInfo, atomic_write_text, write_json


def study_from_config(config: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None) -> Path:
    """Run the label study described by ``config`` (with ``--set`` overrides) into ``out``; returns the folder."""
    import mrlearn.qmri.config  # noqa: F401 - registers the 'qmri' section

    cfg = load_config(config, overrides)
    q = cfg.extra.get("qmri")
    if q is None:
        raise input_error(config, "has no 'qmri' section", "see configs/ivim_labels.yaml")
    run_dir = Path(out) if out else cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    info = RunInfo(run_dir, cfg.seed, {"kind": "qmri_study"})
    info.running()
    t0 = time.time()
    log_lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.time() - t0:7.1f} s] {msg}"
        print(line, flush=True)
        log_lines.append(line)

    try:
        from mrlearn.qmri.report import make_figures, table_rows, write_report, write_tables
        from mrlearn.qmri.study import run_study

        accel = cfg.trainer.accelerator
        results = run_study(q, run_dir, cfg.seed, cfg.optim, cfg.trainer.max_epochs,
                            accelerator="cpu" if accel == "auto" else accel, log=log)
        rows = table_rows(results)
        write_tables(run_dir, rows)
        figs = make_figures(run_dir, results, q.map_axes)
        elapsed = time.time() - t0
        notes = [f"Model {q.model}, b-values {q.bvals}, SNR {q.snrs}, {q.n_train} training signals, "
                 f"{q.grid_points}^3 grid x {q.repeats} repeats, {cfg.trainer.max_epochs} max epochs, seed {cfg.seed}; "
                 f"run time {elapsed:.0f} s.",
                 "Bias, std and RMSE in the parameter's units; rel_* divide by the training range width."]
        write_report(run_dir, f"qMRI label study: {cfg.name}", results, rows, figs, notes)
        write_json(run_dir / "metrics.json", {"summary": rows, "training": results["training"],
                                              "findings": results["findings"], "elapsed_s": elapsed})
        atomic_write_text(run_dir / "log.txt", "\n".join(log_lines) + "\n")
        info.finished(elapsed_s=elapsed)
    except BaseException as exc:
        info.failed(f"{exc.__class__.__name__}: {exc}")
        raise
    return run_dir
