"""Layer-wise study through the shared study runner (``runner: layerwise``): tiny end-to-end study, resume,
consistency of the per-depth scores with the spine's test metrics, the shipped CPU study, input errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from mrlearn.cli import main
from mrlearn.errors import MrlearnError



def _arms(name: str) -> tuple[str, ...]:
    """The arms of a shipped study, in file order (end_to_end, greedy, then the convex arms)."""
    from mrlearn.study import load_study

    return tuple(load_study(name).arms)


ARMS = _arms("layerwise_study_tiny")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny study run once on a 40 x 40 phantom dataset (2/1/1 volumes x 2 slices, 4 coils)."""
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset
    from mrlearn.layerwise.study import PRESETS

    tmp = tmp_path_factory.mktemp("lwstudy")
    root = simulate_dataset(tmp / "data", SimulationOptions(contrasts=("PD",), seed=0, **PRESETS["tiny"][1]))
    out = tmp / "study"
    argv = ["study", "layerwise_study_tiny", "--out", str(out), "--set", f"data.root={root}", "--set", "seeds=[0]",
            "--set", "stopping_check=null"]  # the stopping check's reruns are tested in tests/test_stopping.py
    assert main(argv) == 0
    return out, argv


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _results(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")}


def test_study_csv_has_every_depth_for_every_arm_and_mask(study):
    out, _ = study
    rows = _rows(out / "study.csv")
    html = (out / "report.html").read_text()
    assert "convex_gated" in html and "Metrics against blocks" in html  # the seed's Fig. 2 as a plot
    got = {(r["arm"], json.loads(r["mask"])["name"], r["group"]) for r in rows}
    want = {(a, m, f"blocks={d}") for a in ARMS for m in ("poisson", "random") for d in (1, 2)}
    assert got == want and len(rows) == len(want)
    for r in rows:
        assert math.isfinite(float(r["psnr"])) and 0 < float(r["ssim"]) <= 1 and float(r["nmse"]) > 0
    paired = _rows(out / "paired_differences.csv")
    assert {(p["arm"], p["group"]) for p in paired} == {(a, f"blocks={d}") for a in ARMS[1:] for d in (1, 2)}


def test_depth_scores_match_the_spine_and_greedy_block_one_equals_end_to_end(study):
    out, _ = study
    results = _results(out)
    assert len(results) == 2 * len(ARMS)
    for run_id, res in results.items():
        groups = res["groups"]
        if res["arm"] == "end_to_end":  # one network per depth, each scored like Lightning's test loop
            for d in (1, 2):
                test = json.loads((out / "runs" / run_id / f"depth{d}" / "metrics.json").read_text())["test"]
                assert groups[f"blocks={d}"]["psnr"] == pytest.approx(test["test_psnr"], abs=1e-3)
                assert groups[f"blocks={d}"]["ssim"] == pytest.approx(test["test_ssim"], abs=1e-4)
            # training helps: the full network beats its zero-filled input
            assert groups["blocks=2"]["psnr"] > res["extra"]["zero_filled"]["psnr"]
            assert res["extra"]["memory"]["mode"] == "end_to_end"
        else:  # the full depth of a staged run is what the spine's test loop scored
            test = json.loads((out / "runs" / run_id / "metrics.json").read_text())["test"]
            assert groups["blocks=2"]["psnr"] == pytest.approx(test["test_psnr"], abs=1e-3)
            assert res["extra"]["memory"]["mode"] == "layerwise"
        assert res["extra"]["memory"]["peak_mib"] > 0
        slices = _rows(out / "runs" / run_id / "slices.csv")
        assert {s["group"] for s in slices} == {"blocks=1", "blocks=2"} and len(slices) == 4  # 1 test volume x 2
    # greedy stage 1 is the 1-block end-to-end network (same seed, data order, optimiser): identical scores
    for mask in ("poisson_4_16_16", "random_4_0.08"):
        e2e = results[f"end_to_end__mask-{mask}__seed0"]["groups"]["blocks=1"]
        greedy = results[f"greedy__mask-{mask}__seed0"]["groups"]["blocks=1"]
        assert greedy["psnr"] == pytest.approx(e2e["psnr"], abs=1e-6)


def test_convex_runs_log_gaps_and_patterns(study):
    out, _ = study
    for res in _results(out).values():
        if not res["arm"].startswith("convex"):
            continue
        log = res["extra"]["convex_log"]
        assert [e["block"] for e in log] == [1, 2]
        for e in log:  # the gap is measured between the two logged objectives
            assert e["gap"] == pytest.approx(e["relu_objective"] - e["convex_objective"], rel=1e-6, abs=1e-12)
        gaps = res["extra"]["gap_vs_patterns"]
        assert [g["patterns"] for g in gaps] == [1, 2, 8]  # P // 16, P // 4, P for P = 8
        assert all(g["convex_objective"] > 0 and math.isfinite(g["relu_objective"]) for g in gaps)


def test_rerun_skips_finished_runs(study, capsys):
    out, argv = study
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.count("finished before, skipped") == 2 * len(ARMS) and ": running" not in text
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_shipped_cpu_study_is_the_seed_setup_and_every_arm_builds(tmp_path):
    from mrlearn.study import load_study, run_config
    from mrlearn.training.runner import build_method

    spec = load_study("layerwise_study")
    assert spec.runner == "layerwise" and spec.summary["baseline"] == "end_to_end"
    runs = spec.runs()
    arms = _arms("layerwise_study")
    assert arms[:3] == ("end_to_end", "greedy", "convex_gated") and all(a.startswith("convex") for a in arms[2:])
    assert len(runs) == len(arms) * 2 * len(spec.seeds) and len(spec.seeds) >= 3 and {r.arm for r in runs} == set(arms)
    masks = [r.point["mask"] for r in runs]
    assert {"name": "poisson", "accelerations": [4], "calib": [16, 16]} in masks
    assert {"name": "random", "accelerations": [4], "center_fractions": [0.04]} in masks
    for run in runs[:3]:
        cfg = run_config(spec, run, tmp_path / run.run_id)
        assert (cfg.model["num_blocks"], cfg.model["hidden"], cfg.model["kernel_size"]) == (5, 256, 7)
        build_method(cfg)  # e.g. greedy's max_epochs == blocks x epochs_per_block is checked here


def test_runner_rejects_a_method_that_is_not_layerwise(tmp_path):
    from mrlearn.config import load_config
    from mrlearn.layerwise.study import study_runner

    cfg = load_config("unet_demo")
    cfg.out_dir = str(tmp_path / "run")
    with pytest.raises(MrlearnError) as err:
        study_runner(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "method.name" in msg and "layerwise_end_to_end" in msg
    assert not (tmp_path / "run").exists()


def test_end_to_end_depths_default_to_every_depth_and_bad_ones_are_refused():
    from mrlearn.layerwise.study import _depths

    assert _depths(None, 5) == [1, 2, 3, 4, 5]
    assert _depths([5, 1], 5) == [1, 5]
    for bad in ([], [0], [6], [2, 2], "5", [True], [2.0]):
        with pytest.raises(MrlearnError) as err:
            _depths(bad, 5)
        assert "method.depths" in str(err.value) and "\n" not in str(err.value)


def test_end_to_end_trains_only_the_depths_asked_for(study, tmp_path):
    out, argv = study
    runs = tmp_path / "depths"
    argv = [a if a != str(out) else str(runs) for a in argv]
    assert main([*argv, "--set", "arms={end_to_end: {method: {name: layerwise_end_to_end, loss: {name: l2}, "
                 "lr_step_epochs: 2, lr_gamma: 0.5, depths: [2]}, trainer.max_epochs: 2}}",
                 "--set", "summary.baseline=null", "--set", "grid.mask=[{name: poisson, accelerations: [4], "
                 "calib: [16, 16]}]"]) == 0
    (run,) = (runs / "runs").iterdir()
    assert sorted(p.name for p in run.glob("depth*")) == ["depth2"]
    assert {r["group"] for r in _rows(runs / "study.csv")} == {"blocks=2"}


def test_greedy_and_convex_runs_are_judged_per_block(study):
    out, _ = study
    results = _results(out)
    for row in _rows(out / "study.csv"):
        if row["arm"].startswith("convex"):  # every block solved to its tolerance, or a FISTA run hit max_iter
            log = results[row["run_id"]]["extra"]["convex_log"]
            met = [bool(e["tolerance_met"]) for e in log]
            assert row["stopped_by"] == ("tolerance" if all(met) else "max_iter")
            assert row["converged"] == str(all(met) and len(met) == 2)
        elif row["arm"] == "greedy":  # a block whose best epoch is its last was still improving
            metrics = json.loads((out / "runs" / row["run_id"] / "metrics.json").read_text())
            assert row["stopped_by"] == "block_budget"
            assert row["converged"] == str(not metrics["blocks_still_improving"])
