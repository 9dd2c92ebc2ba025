"""Self-supervised methods end to end on tiny phantom data: `mrlearn train` on target-less files, retrospective
undersampling, one-line config errors, the multi-task SSDU loss, and the comparison-study runner."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import helpers_training  # noqa: F401  (one torch thread: the test machine is small and shared)
from helpers_training import tiny_dataset
from mrlearn.cli import main
from mrlearn.data.fastmri import read_kspace, write_volume
from mrlearn.physics.masks import RandomMaskFunc, file_seed


TINY = ["trainer.max_epochs=1", "data.batch_size=2", "data.contrasts=null"]
# 3x with 8 of the 32 lines in the centre: the ACS maps are usable and the outer lines carry information a learned
# method can use (ssl_tiny's own 4x / 0.25 mask keeps only the 8 centre lines: a low-pass image nothing beats by much)
MASK3 = ["mask.accelerations=[3]", "mask.center_fractions=[0.25]"]
MARGIN_DB = 0.5  # measured with these seeds: SSDU +0.77 dB (4 epochs), distillation +0.93 dB (8 epochs) on val


def zero_filled_psnr(root: Path, split: str, *extra: str) -> float:
    """Mean volume PSNR of the zero-filled input on ``split`` (same per-file masks and scoring as the runs)."""
    from mrlearn.config import load_config
    from mrlearn.ssl.study import score
    from mrlearn.training.data import ReconDataModule
    from mrlearn.training.runner import build_method

    cfg = load_config("ssl_tiny", [f"data.root={root}", *TINY, *extra, "method={name: reference, recon: zero-filled}"])
    return score(build_method(cfg), ReconDataModule(cfg, keep_kspace=True).eval_loader(split)).groups["all"]["psnr"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return Path(tiny_dataset(tmp_path_factory.mktemp("ssl") / "data"))


@pytest.fixture(scope="module")
def targetless(data, tmp_path_factory) -> Path:
    """The tiny volumes as a scanner would give them: undersampled k-space with its mask, no target, no header."""
    out = tmp_path_factory.mktemp("ssl_nt") / "data"
    func = RandomMaskFunc([0.25], [3])
    for split in ("train", "val"):
        (out / split).mkdir(parents=True)
        for f in sorted((data / split).glob("*.h5")):
            k = read_kspace(f)
            mask = func(k.shape[-2:], seed=file_seed(f.name))[0].numpy().reshape(-1).astype(np.float32)
            write_volume(out / split / f.name, (k * mask).astype(np.complex64), acquisition="PD", mask=mask)
    return out


def _train(out: Path, root: Path, *extra: str) -> dict:
    args = ["train", "--config", "ssl_tiny", "--out", str(out), "--set", f"data.root={root}"]
    for item in (*TINY, *extra):
        args += ["--set", item]
    assert main(args) == 0
    return json.loads((out / "metrics.json").read_text())


def test_ssdu_trains_and_validates_on_files_without_any_target(targetless, tmp_path):
    metrics = _train(tmp_path / "run", targetless)
    final = metrics["final"]
    assert math.isfinite(final["val_loss"]) and 0 < final["val_loss"] < 3  # held-out Lambda loss, no target needed
    assert "val_psnr" not in final  # nothing to compare against
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_distillation_on_retrospectively_undersampled_files_logs_the_collapse_monitor(data, tmp_path):
    metrics = _train(tmp_path / "run", data, "method={name: ssl_distill, centre: [2, 2], ema_momentum: 0.9}",
                     "trainer.max_epochs=12", "optim.lr=0.003", *MASK3)
    final = metrics["final"]
    assert final["val_collapse_energy"] > 0.3  # anchored: no collapse
    zf = zero_filled_psnr(data, "val", *MASK3)
    assert final["val_psnr"] > zf + MARGIN_DB, (final["val_psnr"], zf)
    assert math.isfinite(final["val_loss"]) and metrics["best_step"] is not None and metrics["steps"] == 72
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert {"collapse_energy", "val_collapse_energy", "loss_ssdu", "loss_distill"} <= set(acc.Tags()["scalars"])


def test_plain_distillation_collapses_and_the_monitor_stops_the_run(data, tmp_path, capsys):
    args = ["train", "--config", "ssl_tiny", "--out", str(tmp_path / "run"), "--set", f"data.root={data}",
            "--set", "data.contrasts=null", "--set", "optim.lr=0.003", "--set", "trainer.max_epochs=4",
            "--set", "model={name: resnet, in_chans: 2, out_chans: 2, chans: 8, num_blocks: 2}",  # seed 002: no DC
            "--set", "method={name: ssl_distill, variant: plain, centre: [2, 2], ema_momentum: 0.9, collapse_threshold: 0.2}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ssl_distill: the output collapsed (val_collapse_energy" in err[0], err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("setting, fragment", [
    ("method.rho=1.5", "method.rho: must be in (0, 1), got 1.5"),
    ("method.num_masks=0", "method.num_masks: must be at least 1"),
    ("method.selection=box", "method.selection: expected one of 'uniform', 'gaussian'"),
    ("method={name: ssl_distill, variant: dino}", "method.variant: expected one of 'plain', 'anchored'"),
    ("method={name: reference, recon: cs-l1}", "method: 'reference' reconstructions are not trained"),
])
def test_bad_settings_are_one_line_errors(data, tmp_path, capsys, setting, fragment):
    args = ["train", "--config", "ssl_tiny", "--out", str(tmp_path / "bad"), "--set", f"data.root={data}", "--set", setting]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


@pytest.fixture(scope="module")
def two_contrasts(tmp_path_factory) -> Path:
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    opts = SimulationOptions(anatomy="phantom", matrix=(32, 32), slices=2, subjects=(2, 1, 1), contrasts=("PD", "T2"), coils=4)
    return Path(simulate_dataset(tmp_path_factory.mktemp("ssl_mtl") / "data", opts))


def test_multitask_ssdu_loss_never_reads_the_scarce_targets(two_contrasts):
    from mrlearn.config import load_config
    from mrlearn.training.runner import build_method

    root = two_contrasts
    cfg = load_config("mtl_tiny", [f"data.root={root}", "model.cascades=2", "model.chans=4", "model.split=1",
                                   "method={name: mtl_ssdu, ssl_tasks: [scarce], centre: [2, 2], num_masks: 2}"])
    module = build_method(cfg)
    checked = set()
    for batch in module.make_datamodule(cfg).eval_loader("train"):
        task = module.model_task(batch)
        idx = torch.nonzero(task == task[0]).flatten()
        batch["target"] = torch.full_like(batch["target"], float("nan"))
        loss = module._task_loss(batch, idx)
        if int(task[0]) == 1:  # scarce: SSDU on k-space only, the NaN targets are never read
            assert torch.isfinite(loss) and loss.requires_grad
        else:                  # abundant: supervised, uses the targets
            assert torch.isnan(loss)
        checked.add(int(task[0]))
    assert checked == {0, 1}


def test_multitask_ssdu_trains_one_model_through_the_multitask_runner(two_contrasts, tmp_path):
    from mrlearn.study import load_study, run_study

    # every scarce slice (4), CG data consistency, 3x with 8 centre lines: measured +1.5 dB (pd) and +0.8 dB (scarce,
    # trained by the SSDU loss only) over zero-filled after 60 steps; 2 coils or 4x / 0.08 stay below zero-filled
    tiny = ["trainer.max_steps=60", "trainer.max_epochs=1000", "trainer.val_every=4", "model.cascades=2", "model.chans=4",
            "model.split=1", "model.dc=cg", "data.batch_size=2", "optim.lr=0.003", f"data.root={two_contrasts}", *MASK3,
            "tasks.tasks=[{name: pd, contrasts: [PD]}, {name: scarce, contrasts: [T2]}]"]
    arms = {"ssl_mtl": {"method": {"name": "mtl_ssdu", "ssl_tasks": ["scarce"], "centre": [2, 2], "loss": {"name": "l1"}}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "base": "mtl_tiny", "set": tiny, "seeds": [0], "arms": arms}))
    out = run_study(load_study(path), tmp_path / "out", log=lambda s: None)
    rows = {r["group"]: r for r in csv.DictReader(open(out / "study.csv"))}
    assert set(rows) == {"pd", "scarce"}  # one model, both contrasts scored
    zf = json.loads((out / "runs" / "ssl_mtl__seed0" / "result.json").read_text())["extra"]["zero_filled"]
    for group, r in rows.items():
        assert float(r["psnr"]) > zf[group]["psnr"] + MARGIN_DB, (group, r["psnr"], zf[group]["psnr"])


def test_study_runner_scores_references_and_ssdu_on_the_test_split(data, tmp_path):
    from mrlearn.study import load_study, run_study

    study = {"name": "tiny_ssl", "base": "ssl_tiny", "runner": "ssl", "seeds": [0],
             "set": [f"data.root={data}", *TINY, *MASK3, "trainer.max_epochs=4"],
             "arms": {"zero_filled": {"method": {"name": "reference", "recon": "zero-filled"}},
                      "cs": {"method": {"name": "reference", "recon": "cs-l1", "options": {"max_iter": 10}}},
                      "ssdu": {"method": {"name": "ssdu", "centre": [2, 2]}}},
             "summary": {"baseline": "zero_filled"}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    out = run_study(load_study(path), tmp_path / "out", log=lambda s: None)
    rows = {r["arm"]: r for r in csv.DictReader(open(out / "study.csv"))}
    assert set(rows) == {"zero_filled", "cs", "ssdu"}
    for r in rows.values():
        assert 0 < float(r["ssim"]) <= 1 and float(r["nmse"]) > 0
    assert float(rows["zero_filled"]["psnr"]) == pytest.approx(zero_filled_psnr(data, "test", *MASK3), abs=1e-6)
    assert float(rows["ssdu"]["psnr"]) > float(rows["zero_filled"]["psnr"]) + MARGIN_DB
    slices = list(csv.DictReader(open(out / "runs" / "ssdu__seed0" / "slices.csv")))
    assert len(slices) == 8  # 2 test volumes x 4 slices
    assert (out / "report.html").is_file()
