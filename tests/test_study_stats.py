"""Study statistics: bootstrap over seeds x volumes (not slices), verdict rules, convergence in study.csv/report."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import yaml

from mrlearn.study import RunOutcome, load_study, register_runner, run_study
from mrlearn.study.stats import bootstrap_ci, cell_matrix, counts, paired_ci, verdict


def test_bootstrap_constant_and_missing_cells():
    mean, low, high = bootstrap_ci(np.full((3, 4), 0.7))
    assert (mean, low, high) == pytest.approx((0.7, 0.7, 0.7))
    D = np.array([[1.0, np.nan], [np.nan, 3.0]])
    assert bootstrap_ci(D)[0] == pytest.approx(2.0) and counts(D) == (2, 2)
    assert all(math.isnan(x) for x in bootstrap_ci(np.full((1, 1), 1.0))[1:])  # one cell: no interval


def test_bootstrap_matches_the_standard_error_of_a_mean():
    # one seed, V volumes: the percentile interval ~ mean +- 1.96 sd sqrt((V-1)/V) / sqrt(V)
    rng = np.random.default_rng(1)
    D = rng.normal(0.5, 2.0, size=(1, 400))
    mean, low, high = bootstrap_ci(D, n_boot=4000)
    half = 1.959964 * D.std() / math.sqrt(D.size)
    assert mean == pytest.approx(D.mean())
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)


def test_seeds_are_units_of_replication():
    # a large seed effect widens the interval far beyond what the volumes alone give
    rng = np.random.default_rng(2)
    vol = rng.normal(0, 0.1, size=20)
    D = np.array([1.0, -1.0, 0.5])[:, None] + vol[None, :]
    _, low, high = bootstrap_ci(D)
    _, low1, high1 = bootstrap_ci(D[:1])
    assert (high - low) > 5 * (high1 - low1)


def test_slices_are_not_units_of_replication():
    # 50 slices per volume instead of one, same per-volume means: the same interval (a t-interval over slices shrinks)
    rng = np.random.default_rng(3)
    per_volume = rng.normal(0.2, 1.0, size=5)
    few = {(0, f"v{v}"): [per_volume[v]] for v in range(5)}
    noise = [rng.normal(0, 0.01, 50) for _ in range(5)]
    many = {(0, f"v{v}"): list(per_volume[v] + noise[v] - noise[v].mean()) for v in range(5)}
    a, b = bootstrap_ci(cell_matrix(few)[0]), bootstrap_ci(cell_matrix(many)[0])
    assert a == pytest.approx(b)
    _, lo_t, hi_t, _ = paired_ci([x for v in many.values() for x in v])
    assert (hi_t - lo_t) < 0.5 * (a[2] - a[1])  # pseudo-replication would claim far more certainty


def test_verdict_rules():
    assert verdict(0.1, 0.5, 3, 3) == "better" and verdict(-0.5, -0.1, 4, 5) == "worse"
    assert verdict(-0.1, 0.5, 3, 3) == "no clear difference"
    assert verdict(0.1, 0.5, 2, 3) == "no verdict: 2 volume(s) < 3"
    assert verdict(0.1, 0.5, 3, 1) == "no verdict: 1 seed(s) < 3"
    assert verdict(0.1, 0.5, 3, 3, not_converged=["stl"]) == "no verdict: not converged: stl"
    assert verdict(0.1, 0.5, 3, 3, unknown=["mtl"]) == "no verdict: convergence not recorded: mtl"


def conv_runner(cfg) -> RunOutcome:
    """Arm 'capped' stops at its cap while improving; PSNR = 30 + 10 lr + volume offset (+ seed noise)."""
    lr = float(cfg.optim["lr"])
    capped = lr == 0.3
    slices = [{"group": "g", "fname": f"v{v}.h5", "slice": s, "psnr": 30 + 10 * lr + v + 0.01 * cfg.seed + 0.001 * s,
               "ssim": 0.9, "nmse": 0.01} for v in range(3) for s in range(2)]
    record = {"steps": 100, "best_step": 100 if capped else 60, "stopped_by": "max_steps" if capped else "early_stopping",
              "converged": not capped}
    (cfg.run_dir()).mkdir(parents=True, exist_ok=True)
    (cfg.run_dir() / "metrics.json").write_text(json.dumps(record))  # as the engine writes it
    return RunOutcome(groups={"g": {"psnr": 30 + 10 * lr, "ssim": 0.9, "nmse": 0.01}}, slices=slices)


register_runner("conv_test", conv_runner)


def test_report_flags_not_converged_and_gives_verdicts_only_when_allowed(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "base": "unet_demo", "runner": "conv_test", "seeds": [0, 1, 2],
                                    "arms": {"base": {"optim.lr": 0.1}, "good": {"optim.lr": 0.2},
                                             "capped": {"optim.lr": 0.3}},
                                    "budget": "to_convergence", "summary": {"baseline": "base"}}))
    out = run_study(load_study(path), tmp_path / "o", log=lambda s: None)
    rows = list(csv.DictReader(open(out / "study.csv")))
    assert {"steps", "best_step", "stopped_by", "converged"} <= set(rows[0])
    capped = [r for r in rows if r["arm"] == "capped"]
    assert {(r["stopped_by"], r["converged"]) for r in capped} == {("max_steps", "False")}
    diffs = {d["arm"]: d for d in csv.DictReader(open(out / "paired_differences.csv"))}
    assert diffs["good"]["verdict"] == "better" and float(diffs["good"]["dpsnr_mean"]) == pytest.approx(1.0)
    assert (diffs["good"]["volumes"], diffs["good"]["seeds"]) == ("3", "3")
    assert diffs["capped"]["verdict"] == "no verdict: not converged: capped"
    assert "capped: not converged (3/3 runs)" in diffs["capped"]["convergence"]
    html = (out / "report.html").read_text()
    assert "<strong>capped: not converged (3/3 runs)</strong>" in html
    assert "<strong>not converged (3/3 runs)</strong>" in html and "Budget policy: to_convergence" in html
    assert yaml.safe_load((out / "study.yaml").read_text())["budget"] == "to_convergence"


def test_task_curves_read_the_validation_history_against_steps_and_samples_seen():
    from mrlearn.study.figures import task_curve_figure, task_curves

    history = [{"epoch": 0, "train_loss": 0.1, "step": 10, "samples/scarce": 4},  # a training entry: no validation
               {"epoch": 1, "step": 20, "samples/scarce": 8, "val_psnr/scarce": 25.0, "val_psnr/pd": 27.0},
               {"epoch": 2, "step": 40, "samples/scarce": 16, "val_psnr/scarce": 26.0}]
    assert task_curves(history, "scarce") == [(20.0, 8.0, 25.0), (40.0, 16.0, 26.0)]
    assert task_curves(history, "other") == []
    fig = task_curve_figure({"stl": [task_curves(history, "scarce")]}, "scarce")
    assert [ax.get_xlabel() for ax in fig.axes] == ["optimiser steps", "scarce samples seen"]
    assert list(fig.axes[1].lines[0].get_xdata()) == [8.0, 16.0]


def test_reference_rows_are_not_trained_rather_than_unknown():
    from mrlearn.study.summary import status

    assert status([None, None], ["not_trained", "not_trained"]) == "not trained"
    assert status([None, None]) == "unknown" and status([None], [None]) == "unknown"
    assert status([True, False], ["max_steps", "early_stopping"]) == "not converged (1/2 runs)"
    assert status([True, True], ["early_stopping", "early_stopping"]) == "converged"
    assert status([False], ["max_iter"]) == "not converged: solver at its iteration cap (1/1 runs)"
    assert status([True], ["tolerance"]) == "converged"
