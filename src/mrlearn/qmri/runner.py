"""One run of the label study as a study runner: ExperimentConfig (with a ``qmri`` section) -> run folder content.

``mrlearn study ivim_labels`` runs the study file ``configs/ivim_labels.yaml`` (seeds x SNR grid) through the one
study runner, which calls :func:`label_study_runner` for each run (registered as runner ``qmri`` in
:mod:`mrlearn.qmri.study`). The run folder gets ``table.csv``/``table.json``, the figures, ``report.html``,
``metrics.json`` (summary, each network's convergence record, findings), ``log.txt``, ``models/`` (networks for
``mrlearn qmri fit --method net``) and ``nets/`` (their training folders). ``mrlearn qmri study`` is a thin preset
over ``mrlearn study``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mrlearn.errors import input_error
from mrlearn.io import atomic_write_text, write_json
from mrlearn.study.results import CONVERGENCE_FIELDS

METRIC_KEYS = ("abs_bias", "std", "rmse")


def run_label_study(cfg: Any, out: Path, log=print, resume: bool = False) -> dict[str, Any]:
    """Run the study of ``cfg.extra['qmri']`` into ``out``; returns the results (see :func:`.study.run_study`);
    ``resume``: continue an interrupted study in ``out``."""
    from mrlearn.qmri.report import make_figures, table_rows, write_report, write_tables
    from mrlearn.engine.cluster import process_rank
    from mrlearn.qmri.study import run_study

    q = cfg.extra.get("qmri")
    if q is None:
        raise input_error(cfg.name, "has no 'qmri' section", "see configs/ivim_labels.yaml")
    writer = process_rank() == 0  # DDP (trainer.devices > 1): every rank runs the study, rank 0 writes and logs
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    lines: list[str] = []

    def _log(msg: str) -> None:
        line = f"[{time.time() - t0:7.1f} s] {msg}"
        if writer:
            log(line)
        lines.append(line)

    accel = cfg.trainer.accelerator
    results = run_study(q, out, cfg.seed, cfg.optim, cfg.trainer.max_epochs,
                        accelerator="cpu" if accel == "auto" else accel, log=_log, max_steps=cfg.trainer.max_steps,
                        devices=cfg.trainer.devices, strategy=cfg.trainer.strategy, resume=resume)
    rows = table_rows(results)
    if not writer:
        return results
    write_tables(out, rows)
    figs = make_figures(out, results, q.map_axes)
    elapsed = time.time() - t0
    notes = [f"Model {q.model}, b-values {q.bvals}, SNR {q.snrs}, {q.n_train} training signals, {q.grid_points}^3 grid "
             f"x {q.repeats} repeats, batch {q.batch_size}, up to {cfg.trainer.max_epochs} epochs with patience "
             f"{q.patience}, init from the groundtruth network: {q.init_from_gt}, seed {cfg.seed}; run time {elapsed:.0f} s."]
    write_report(out, f"qMRI label study: {cfg.name} (seed {cfg.seed})", results, rows, figs, notes)
    write_json(out / "metrics.json", {"summary": rows, "training": results["training"],
                                      "fits": results.get("fits", {}), "findings": results["findings"],
                                      "elapsed_s": elapsed})
    atomic_write_text(out / "log.txt", "\n".join(lines) + "\n")
    return results


def outcome_groups(results: dict[str, Any]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """Study groups ``snr<k>/<method>`` -> metrics ``<abs_bias|std|rmse>_<param>``, and their convergence records
    (the network's training; the per-voxel MLE fit's stopping, as a classical solver's)."""
    groups: dict[str, dict[str, float]] = {}
    conv: dict[str, dict[str, Any]] = {}
    for snr, per in results["snr"].items():
        for method, r in per.items():
            g = f"snr{snr}/{method}"
            groups[g] = {f"{m}_{k}": float(s[m]) for k, s in r["summary"].items() for m in METRIC_KEYS}
            rec = results["training"].get(f"snr{snr}/{method}") or results.get("fits", {}).get(f"snr{snr}/{method}")
            if rec is not None:
                conv[g] = {k: rec.get(k) for k in CONVERGENCE_FIELDS}
    return groups, conv


def label_study_runner(cfg: Any, resume: bool = False):
    """Study runner ``qmri``: one label study run in ``cfg.run_dir()`` -> RunOutcome (groups, convergence). The run
    folder is held as a run (``run.json``, :mod:`mrlearn.training.phases`), so an interrupted study run is resumed
    (``resume``: the fits done are read back, every network continues from its checkpoint)."""
    from mrlearn.study.results import RunOutcome
    from mrlearn.training.phases import run_folder

    with run_folder(cfg, resume, "qmri") as folder:
        results = run_label_study(cfg, cfg.run_dir(), resume=resume)
        folder.finished()
    groups, conv = outcome_groups(results)
    return RunOutcome(groups=groups, extra={"convergence": conv, "findings": results["findings"]})


def study_from_config(config: str | Path, overrides=(), out: str | Path | None = None) -> Path:
    """``mrlearn qmri study``: the study file ``config`` (path or shipped name) run by the one study runner."""
    from mrlearn.study import load_study, run_study

    spec = load_study(config, list(overrides))
    return Path(run_study(spec, out))
