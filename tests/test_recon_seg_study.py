"""The recon_seg study: the runner's pipelines (joint with per-task selection, two-step, zero-filled, target
ceiling), each task scored from its own best checkpoint, the zero_filled model, bad settings, the presets, and the
tiny study end to end (study.csv with Dice, cells.csv, paired differences of PSNR and Dice in one Holm family, the
stopping check on both metrics, label overlays in the report)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_training import tiny_dataset
from mrlearn.errors import MrlearnError
from mrlearn.study import load_study, run_config

FAST = ["trainer.max_steps=6", "trainer.val_every_n_steps=2", "summary.baseline=null"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("recon_seg_study_data"))


def _config(data: Path, out: Path, arm: str, *sets: str):
    spec = load_study("recon_seg_tiny", [f"data.root={data}", "seeds=[0]", f"arms=[{arm}]", *FAST, *sets])
    run = spec.runs()[0]
    return run_config(spec, run, out / run.run_id)


def _run(data: Path, out: Path, arm: str, *sets: str):
    from mrlearn.recon_seg.study import study_runner

    torch.set_num_threads(1)
    cfg = _config(data, out, arm, *sets)
    return cfg, study_runner(cfg)


def _test_batches(cfg):
    from mrlearn.training.data import ReconDataModule

    return list(ReconDataModule(cfg, keep_kspace=True).eval_loader("test"))


def _dice_of(labels_by_slice, batches):
    """Mean foreground Dice per slice (classes present in either map), the runner's per-slice definition."""
    from mrlearn.evaluation.segmentation import dice_per_class, mean_foreground

    out = {}
    for b in batches:
        for i, (f, s) in enumerate(zip(b["fname"], b["slice"])):
            ref = b["segmentation"][i, 0].numpy()
            out[(f, int(s))] = mean_foreground(dice_per_class(labels_by_slice[(f, int(s))], ref, 8))
    return out


# ----------------------------------------------------------------------------------------------- the zero_filled model


def test_zero_filled_model_is_the_rss_of_the_zero_filled_coil_images():
    from mrlearn.recon_seg.zero_filled import ZeroFilled

    g = torch.Generator().manual_seed(0)
    k = torch.complex(torch.randn(2, 3, 8, 6, generator=g), torch.randn(2, 3, 8, 6, generator=g))
    mask = torch.zeros(1, 1, 1, 6)
    mask[..., ::2] = 1
    got = ZeroFilled()(k * mask, mask)
    kk = (k * mask).numpy()
    coils = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kk, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    expected = np.sqrt((np.abs(coils) ** 2).sum(1))
    assert got.is_complex() and torch.all(got.imag == 0)
    np.testing.assert_allclose(got.real.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not list(ZeroFilled().parameters())


# ----------------------------------------------------------------------------------------------- the pipelines


def test_two_step_trains_the_reconstruction_then_the_segmenter_in_one_run(data, tmp_path):
    cfg, outcome = _run(data, tmp_path, "two_step")
    run_dir = cfg.run_dir()
    first, second = run_dir / "recon", run_dir / "seg"
    from mrlearn.config import load_config

    c1, c2 = load_config(first / "config.yaml"), load_config(second / "config.yaml")
    assert (c1.method["stage"], c1.method["monitor"], c1.trainer.early_stopping.monitor) == ("recon", "val_psnr", "val_psnr")
    assert (c2.method["stage"], c2.method["monitor"], c2.trainer.early_stopping.monitor) == ("seg", "val_dice", "val_dice")
    assert c2.model["init"] == str(first / "checkpoints" / "best.ckpt")  # the segmenter starts from stage 1's best
    a = torch.load(first / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    b = torch.load(second / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    recon = [k for k in a if k.startswith("model.recon.")]
    assert recon and all(torch.equal(a[k], b[k]) for k in recon)  # the reconstruction stays as selected
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("model.segmenter."))
    tasks = outcome.extra["tasks"]
    assert tasks["recon"]["monitor"] == "val_psnr" and tasks["seg"]["monitor"] == "val_dice"
    assert outcome.extra["convergence"]["steps"] == tasks["recon"]["steps"] + tasks["seg"]["steps"]
    metrics = outcome.groups["all"]
    assert math.isfinite(metrics["psnr"]) and 0 <= metrics["dice"] <= 1
    assert all("dice" in r and "psnr" in r for r in outcome.slices)


def test_zero_filled_arm_trains_no_reconstruction_and_reports_the_zero_filled_image(data, tmp_path):
    from mrlearn.evaluation.scoring import score_batches

    cfg, outcome = _run(data, tmp_path, "zero_filled")
    assert not (cfg.run_dir() / "recon").exists() and (cfg.run_dir() / "seg" / "checkpoints" / "best.ckpt").is_file()
    state = torch.load(cfg.run_dir() / "seg" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert not any(k.startswith("model.recon.") for k in state)  # nothing to train in the reconstruction
    # its image metrics are those of the transform's zero-filled input (an independent path to the same image)
    groups, _, _ = score_batches(lambda b: b["zero_filled"][:, 0].float(), _test_batches(cfg))
    for key in ("psnr", "ssim", "nmse"):
        assert outcome.groups["all"][key] == pytest.approx(groups["all"][key], rel=1e-4)


def test_target_arm_segments_the_fully_sampled_image_and_reports_no_reconstruction(data, tmp_path):
    from mrlearn.config import load_config
    from mrlearn.training.runner import load_module

    cfg, outcome = _run(data, tmp_path, "target")
    stage = load_config(cfg.run_dir() / "seg" / "config.yaml")
    assert stage.method["seg_input"] == "target" and stage.method["seg_eval_input"] == "target"
    assert "psnr" not in outcome.groups["all"] and "output" not in outcome.examples["all"]
    module = load_module(cfg.run_dir() / "seg" / "checkpoints" / "best.ckpt", stage)
    batches = _test_batches(cfg)
    labels = {}
    with torch.no_grad():  # reference: the segmenter applied to the target images directly
        for b in batches:
            pred = module.model.segment(b["target"][:, 0].float()).argmax(1)
            labels.update({(f, int(s)): pred[i].numpy() for i, (f, s) in enumerate(zip(b["fname"], b["slice"]))})
    expected = _dice_of(labels, batches)
    got = {(r["fname"], r["slice"]): r["dice"] for r in outcome.slices}
    assert got.keys() == expected.keys()
    assert all(got[k] == pytest.approx(expected[k], nan_ok=True) for k in got)


def test_joint_arm_scores_each_task_from_its_own_best_checkpoint(data, tmp_path):
    from mrlearn.evaluation.scoring import score_batches
    from mrlearn.recon_seg.study import stage_config
    from mrlearn.training.runner import load_module

    # the segmentation rule fires early (patience 1), the reconstruction runs to the cap: different selections
    cfg, outcome = _run(data, tmp_path, "ynet", "trainer.max_steps=10",
                        "recon_seg_run.seg_early_stopping={patience: 1, min_delta: 0.5}",
                        "trainer.early_stopping={monitor: val_psnr, patience: 50}")
    tasks = outcome.extra["tasks"]
    recon, seg = tasks["recon"], tasks["seg"]
    assert seg["stopped_by"] == "early_stopping" and recon["stopped_by"] == "max_steps"
    assert Path(recon["checkpoint"]).name == "best_recon.ckpt" and Path(seg["checkpoint"]).name == "best_seg.ckpt"
    for rec in (recon, seg):  # each checkpoint is its task's best validation before its rule fired
        own = [v for step, _, v, _ in rec["curve"] if rec["stop_step"] is None or step <= rec["stop_step"]]
        assert rec["best_score"] == pytest.approx(max(own))
        assert torch.load(rec["checkpoint"], weights_only=True)["global_step"] == rec["best_step"]
    assert recon["best_step"] != seg["best_step"]
    stage = stage_config(cfg, None, {"stage": "joint", "monitor": "val_psnr"}, None)
    batches = _test_batches(cfg)
    image_module = load_module(recon["checkpoint"], stage)
    seg_module = load_module(seg["checkpoint"], stage)
    with torch.no_grad():
        groups, _, _ = score_batches(image_module.reconstruct, batches)
        labels = {}
        for b in batches:
            pred = seg_module.segment(b)
            labels.update({(f, int(s)): pred[i].numpy() for i, (f, s) in enumerate(zip(b["fname"], b["slice"]))})
    assert outcome.groups["all"]["psnr"] == pytest.approx(groups["all"]["psnr"], rel=1e-5)
    expected = _dice_of(labels, batches)
    assert all(r["dice"] == pytest.approx(expected[(r["fname"], r["slice"])], nan_ok=True) for r in outcome.slices)
    saved = json.loads((cfg.run_dir() / "selection.json").read_text())
    assert saved["tasks"]["seg"]["best_step"] == seg["best_step"] and saved["merged"]["converged"] is False


# ----------------------------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize("arm, sets, match", [
    ("two_step", ["arms.two_step.model={name: ynet, num_classes: 8, chans: 4, num_pools: 2}"],
     "pipeline two_step trains a recon_then_seg"),
    ("zero_filled", ["arms.zero_filled.model.recon={name: unrolled, cascades: 1, chans: 4}"],
     "set model.recon: {name: zero_filled}"),
    ("ynet", ["recon_seg_run.pipeline=fancy"], "recon_seg_run.pipeline: unknown pipeline 'fancy'"),
    ("ynet", ["recon_seg_run.seg_early_stopping={monitor: val_psnr}"], "recon_seg_run.seg_early_stopping.monitor"),
    ("ynet", ["recon_seg_run.seg_early_stopping={patience: 0}"], "recon_seg_run.seg_early_stopping"),
    ("ynet", ["trainer.early_stopping={monitor: val_dice, patience: 2}"], "trainer.early_stopping.monitor"),
])
def test_bad_settings_are_one_line(data, tmp_path, arm, sets, match):
    with pytest.raises(MrlearnError, match=match) as exc:
        _run(data, tmp_path, arm, *sets)
    assert "\n" not in str(exc.value)


def test_segmenting_the_target_needs_a_segmenter_trained_on_it(data, tmp_path):
    from mrlearn.training.runner import build_method

    cfg = _config(data, tmp_path, "target", "method.stage=seg", "method.seg_eval_input=target")
    with pytest.raises(MrlearnError, match="method.seg_eval_input: 'target' segments the reference images"):
        build_method(cfg)


# ----------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", ["recon_seg", "recon_seg_gpu", "recon_seg_tiny"])
def test_presets_compare_every_arm_at_4x_and_8x_with_each_task_on_its_own_metric(name, tmp_path):
    spec = load_study(name)
    assert set(spec.arms) == {"ynet", "unrolled_seg", "cross_stitch", "two_step", "zero_filled", "target"}
    assert [m["accelerations"] for m in spec.grid["mask"]] == [[4], [8]]
    assert spec.summary["baseline"] == "two_step" and spec.summary["verdict_metrics"] == ["psnr", "dice"]
    assert len(spec.seeds) >= 3 and spec.budget == "to_convergence" and spec.stopping_check is not None
    assert spec.runner == "recon_seg"
    pipelines = {}
    for run in spec.runs():
        cfg = run_config(spec, run, tmp_path / run.run_id)
        section = cfg.extra["recon_seg_run"]
        pipelines[run.arm] = section.pipeline
        assert cfg.trainer.early_stopping.monitor == "val_psnr" and section.seg_stopping().monitor == "val_dice"
        assert cfg.method["weighting"]["name"] == "uncertainty"
    assert pipelines == {"ynet": "joint", "unrolled_seg": "joint", "cross_stitch": "joint", "two_step": "two_step",
                         "zero_filled": "zero_filled", "target": "target"}
    if name == "recon_seg":
        assert spec.stopping_check["tolerances"]["dice"] > 0
        text = Path(spec.path).read_text()
        assert "mrlearn study recon_seg --out runs/recon_seg" in text and "minutes" in text.split("\nname:")[0]
    if name == "recon_seg_gpu":
        assert "NOT measured on a GPU" in Path(spec.path).read_text().splitlines()[0]


# ----------------------------------------------------------------------------------------------- the tiny study


def test_tiny_study_end_to_end(data, tmp_path):
    from mrlearn.study import run_study

    torch.set_num_threads(1)
    out = tmp_path / "study"
    sets = [f"data.root={data}", "seeds=[0]", "trainer.max_steps=6"]
    run_study(load_study("recon_seg_tiny", sets), out, log=lambda s: None)
    with open(out / "study.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["arm"] for r in rows} == {"ynet", "unrolled_seg", "cross_stitch", "two_step", "zero_filled", "target"}
    assert len(rows) == 12 and all(0 <= float(r["dice"]) <= 1 for r in rows)
    assert all(math.isnan(float(r["psnr"])) == (r["arm"] == "target") for r in rows)  # the ceiling: no reconstruction
    assert all(r["stopping_sensitive"] in ("True", "False") for r in rows)
    with open(out / "cells.csv", newline="") as fh:
        metrics = {r["metric"] for r in csv.DictReader(fh)}
    assert {"psnr", "ssim", "nmse", "dice"} <= metrics
    with open(out / "paired_differences.csv", newline="") as fh:
        diffs = list(csv.DictReader(fh))
    assert {d["metric"] for d in diffs} == {"psnr", "dice"}
    assert {d["arm"] for d in diffs if d["metric"] == "dice"} == {"ynet", "unrolled_seg", "cross_stitch", "zero_filled", "target"}
    assert all(d["verdict"].startswith("no verdict") for d in diffs)  # 2 test subjects, 1 seed: below the rules
    with open(out / "stopping_check.csv", newline="") as fh:
        checks = list(csv.DictReader(fh))
    assert {c["metric"] for c in checks} == {"psnr", "dice"} and len({c["arm"] for c in checks}) == 6
    assert len(list((out / "runs").glob("*__check"))) == 12
    html = (out / "report.html").read_text()
    for title in ("Label overlays", "Paired Dice difference", "Paired PSNR difference", "Stopping check", "dice_mean"):
        assert title in html, title
    with np.load(next((out / "runs").glob("target__*seed0/examples.npz"))) as ex:
        assert {"all/labels", "all/seg", "all/target"} <= set(ex.files)


# ----------------------------------------------------------------------------------------------- the study pieces


def test_verdicts_on_psnr_and_dice_form_one_holm_family():
    from mrlearn.study.compare import paired_differences
    from mrlearn.study.spec import RunSpec
    from mrlearn.study.stats import holm

    rng = np.random.default_rng(0)
    runs = [RunSpec(f"{arm}__seed{s}", arm, {}, s, {}) for arm in ("base", "arm") for s in range(3)]
    cells, rows = {}, []
    for run in runs:
        for metric, shift in (("psnr", 0.5), ("dice", 0.01)):
            cells[(run.run_id, "all", metric)] = {
                (run.seed, f"sub-{v}"): (1.0 + (shift if run.arm == "arm" else 0.0) + rng.normal(0, shift), 4)
                for v in range(8)}
        rows.append({"run_id": run.run_id, "arm": run.arm, "group": "all", "converged": True})
    table = paired_differences(cells, runs, "base", rows=rows, metrics=["psnr", "dice"])
    assert [t["metric"] for t in table] == ["psnr", "dice"] and all("d_mean" in t for t in table)
    assert all(t["family"] == 2 for t in table)
    assert [t["p_holm"] for t in table] == pytest.approx(holm([t["p"] for t in table]))
    alone = paired_differences(cells, runs, "base", rows=rows, metric="dice")
    assert alone[0]["family"] == 1 and alone[0]["ddice_mean"] == pytest.approx(table[1]["d_mean"])


def test_a_runners_per_slice_dice_reaches_the_cells(tmp_path):
    from mrlearn.study.cells import run_cells
    from mrlearn.study.results import RunOutcome, read_slices, write_outcome
    from mrlearn.study.spec import RunSpec

    run = RunSpec("a__seed0", "a", {}, 0, {})
    slices = [{"group": "all", "fname": "f.h5", "slice": i, "psnr": 30.0 + i, "ssim": 0.9, "nmse": 0.01,
               "subject": "sub-1", "dice": d} for i, d in enumerate([0.5, 0.7, math.nan])]
    write_outcome(tmp_path, run, RunOutcome(groups={"all": {"dice": 0.6}}, slices=slices), 1.0)
    back = read_slices(tmp_path)
    assert [r["dice"] for r in back][:2] == [0.5, 0.7] and math.isnan(back[2]["dice"])
    cells = {c["metric"]: c for c in run_cells(run, back)}
    assert cells["dice"]["value"] == pytest.approx(0.6) and cells["dice"]["slices"] == 2  # NaN slice left out
    assert cells["psnr"]["value"] == pytest.approx(31.0) and cells["psnr"]["slices"] == 3


def test_stopping_check_compares_every_verdict_metric_with_its_own_floor(tmp_path):
    from mrlearn.study.spec import RunSpec, StudySpec
    from mrlearn.study.stopping_check import DEFAULTS, stopping_table

    spec = StudySpec(name="s", base={}, seeds=[0], arms={"a": {}, "b": {}},
                     summary={"baseline": "a", "verdict_metrics": ["psnr", "dice"]},
                     stopping_check={**DEFAULTS, "tolerances": {"dice": 0.01}})
    runs = [RunSpec(f"{arm}__seed0", arm, {}, 0, {}) for arm in ("a", "b")]
    scores = {"a__seed0": (30.0, 0.80), "a__seed0__check": (30.05, 0.85),  # a: Dice moved by 0.05 > 0.01
              "b__seed0": (31.0, 0.80), "b__seed0__check": (31.05, 0.805)}  # b: within both floors
    for rid, (psnr, dice) in scores.items():
        (tmp_path / "runs" / rid).mkdir(parents=True)
        (tmp_path / "runs" / rid / "result.json").write_text(json.dumps(
            {"status": "finished", "groups": {"all": {"psnr": psnr, "dice": dice}}}))
    rows = [{"run_id": r.run_id, "arm": r.arm, "group": "all"} for r in runs]
    table = stopping_table(spec, tmp_path, runs, rows, lambda: [])
    got = {(t["arm"], t["metric"]): t for t in table}
    assert got[("a", "dice")]["sensitive"] == "yes" and got[("a", "dice")]["tolerance"] == pytest.approx(0.01)
    assert got[("a", "psnr")]["sensitive"] == "no" and got[("a", "psnr")]["tolerance"] == pytest.approx(0.1)
    assert got[("b", "dice")]["sensitive"] == "no"
    assert [r["stopping_sensitive"] for r in rows] == [True, False]


@pytest.mark.parametrize("value", [[], "psnr", ["psnr", "psnr"]])
def test_verdict_metrics_must_be_a_list_of_names(value):
    from mrlearn.study.spec import study_from_dict

    with pytest.raises(MrlearnError, match="summary.verdict_metrics"):
        study_from_dict({"base": "unet_demo", "summary": {"verdict_metrics": value}}, "s")


@pytest.mark.parametrize("value", [{"dice": -1}, {"dice": "small"}, [0.01]])
def test_stopping_tolerances_must_map_metrics_to_numbers(value):
    from mrlearn.study.spec import study_from_dict

    with pytest.raises(MrlearnError, match="stopping_check.tolerances") as exc:
        study_from_dict({"base": "unet_demo", "stopping_check": {"tolerances": value}}, "s")
    assert "\n" not in str(exc.value)
