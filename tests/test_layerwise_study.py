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
REFERENCES = ("zero_filled", "cg_sense")


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
        if res["arm"] in REFERENCES:  # classical rows: checked in test_reference_rows
            continue
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
    for run_id, res in _results(out).items():
        if not res["arm"].startswith("convex"):
            continue
        log = res["extra"]["convex_log"]
        assert [e["block"] for e in log] == [1, 2]
        history = json.loads((out / "runs" / run_id / "metrics.json").read_text())["history"]
        for e, h in zip(log, history):  # beta chosen per block on validation PSNR among 5 candidates
            cands = e["candidates"]
            assert [c["beta"] for c in cands] == [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
            best = max(c["val_psnr"] for c in cands)
            assert e["val_psnr"] == best and e["beta"] == next(c["beta"] for c in cands if c["val_psnr"] == best)
            assert e["tolerance_met"] == all(c["tolerance_met"] for c in cands)
            # the installed block is the winner: the engine's validation after that epoch scores the same network
            assert h["val_psnr"] == pytest.approx(e["val_psnr"], abs=1e-6) and h["blocks"] == e["block"]
        for e in log:  # the gap is measured between the two logged objectives
            assert e["gap"] == pytest.approx(e["relu_objective"] - e["convex_objective"], rel=1e-6, abs=1e-12)
        gaps = res["extra"]["gap_vs_patterns"]
        assert [g["patterns"] for g in gaps] == [1, 2, 8]  # P // 16, P // 4, P for P = 8
        assert all(g["convex_objective"] > 0 and math.isfinite(g["relu_objective"]) for g in gaps)


def test_reference_rows(study):
    """Zero-filled equals the networks' input at every depth; CG-SENSE stops on its tolerance; both untrained."""
    out, _ = study
    results = _results(out)
    rows = _rows(out / "study.csv")
    for mask in ("poisson_4_16_16", "random_4_0.08"):
        zero = results[f"zero_filled__mask-{mask}__seed0"]
        e2e = results[f"end_to_end__mask-{mask}__seed0"]
        cg = results[f"cg_sense__mask-{mask}__seed0"]
        for d in (1, 2):
            for m in ("psnr", "ssim", "nmse"):  # the same input image, scored the same way
                assert zero["groups"][f"blocks={d}"][m] == pytest.approx(e2e["extra"]["zero_filled"][m], rel=1e-6)
            assert cg["groups"][f"blocks={d}"] == cg["groups"]["blocks=1"]  # a classical method has no depth
        assert cg["groups"]["blocks=1"]["psnr"] != pytest.approx(zero["groups"]["blocks=1"]["psnr"], abs=1e-3)
        assert len(_rows(out / "runs" / f"cg_sense__mask-{mask}__seed0" / "slices.csv")) == 4
    by_arm = {(r["arm"], r["group"]): r for r in rows if json.loads(r["mask"])["name"] == "poisson"}
    assert by_arm[("zero_filled", "blocks=2")]["stopped_by"] == "not_trained"
    assert by_arm[("cg_sense", "blocks=2")]["stopped_by"] == "tolerance"
    assert by_arm[("cg_sense", "blocks=2")]["monitor"] == "relative_residual"


def test_cg_sense_reference_of_fully_sampled_data_is_the_target():
    """Closed form: with every line sampled and lam = 0, CG-SENSE with the target's own maps returns the target."""
    from mrlearn.data.dataset import SliceDataset
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset
    from mrlearn.layerwise.reference import ReferenceTransform

    root = simulate_dataset(None, SimulationOptions(contrasts=("PD",), seed=0, matrix=(32, 32), slices=1,
                                                    subjects=(1, 1, 1), coils=4, anatomy="phantom"))
    raw = SliceDataset(Path(root) / "test")[0]
    infos: list = []
    t = ReferenceTransform(None, "cg-sense", {"lam": 0.0, "tol": 1e-10, "max_iter": 200}, infos)
    s = t(raw, 0, 0)
    target = s["target"][0].double()
    assert (s["reference"].abs().double() - target).abs().max() <= 1e-4 * target.max()
    assert infos and infos[0]["tolerance_met"]


@pytest.mark.parametrize("method, needle", [
    ({"name": "reference", "recon": "cs-l1"}, "method.recon"),
    ({"name": "reference", "recon": "cg-sense", "options": {"lamda": 0.1}}, "method.options"),
    ({"name": "reference", "recon": "cg-sense", "options": {"max_iter": 0}}, "method.options.max_iter"),
    ({"name": "reference", "recon": "zero-filled", "options": {"lam": 0.1}}, "method.options"),
])
def test_reference_rows_refuse_bad_options(method, needle):
    from mrlearn.layerwise.reference import reference_options

    with pytest.raises(MrlearnError) as err:
        reference_options(method["recon"], method.get("options"))
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("beta, betas, needle", [
    (1e-5, [1e-5, 1e-4], "not both"), (None, [], "non-empty"), (None, [1e-4, 1e-4], "repeated"),
    (None, [-1.0], ">= 0"), (float("nan"), None, ">= 0"), (None, "1e-4", "non-empty")])
def test_convex_beta_candidates_are_checked(beta, betas, needle):
    from mrlearn.layerwise.beta import parse_betas

    with pytest.raises(MrlearnError) as err:
        parse_betas(beta, betas)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert parse_betas(None, [1e-6, 1e-2, 1e-4]) == (1e-2, 1e-4, 1e-6) and parse_betas(None, None) == (1e-4,)


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
    assert arms == ("end_to_end", "greedy", "convex_gated", "zero_filled", "cg_sense")
    assert spec.arms["end_to_end"]["method"].get("depths") in (None, [1, 2, 3])  # every depth the report shows
    assert len(spec.arms["convex_gated"]["method"]["betas"]) >= 5
    assert spec.arms["cg_sense"]["method"] == {"name": "reference", "recon": "cg-sense",
                                               "options": {"lam": 0.01, "tol": 1.0e-6, "max_iter": 300}}
    assert len(runs) == len(arms) * 2 * len(spec.seeds) and len(spec.seeds) >= 3 and {r.arm for r in runs} == set(arms)
    masks = [r.point["mask"] for r in runs]
    assert {"name": "poisson", "accelerations": [4], "calib": [16, 16]} in masks
    assert {"name": "random", "accelerations": [4], "center_fractions": [0.04]} in masks
    for run in runs[:3]:
        cfg = run_config(spec, run, tmp_path / run.run_id)
        assert (cfg.model["num_blocks"], cfg.model["hidden"], cfg.model["kernel_size"]) == (3, 64, 7)
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
