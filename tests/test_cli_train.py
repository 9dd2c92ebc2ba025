"""CLI: mrlearn train / reconstruct end to end on tiny data, and their one-line errors (exit status 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers_data import rss_target
from helpers_training import TINY_SET, tiny_dataset
from mrlearn.cli import main
from mrlearn.data.fastmri import read_kspace, read_reconstruction, write_volume
from mrlearn.physics.masks import EquiSpacedMaskFunc, file_seed



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("cli") / "data")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_run") / "run"
    args = ["train", "--config", "unet_demo", "--out", str(out), "--set", f"data.root={data}"]
    for item in (*TINY_SET, "trainer.max_epochs=1"):
        args += ["--set", item]
    assert main(args) == 0
    return out


def test_train_writes_a_finished_run_and_prints_where(trained, capsys):
    assert json.loads((trained / "run.json").read_text())["status"] == "finished"
    assert (trained / "checkpoints" / "best.ckpt").is_file()


def test_train_resume_of_a_finished_run_keeps_the_result(trained, capsys):
    before = json.loads((trained / "metrics.json").read_text())["final"]
    assert main(["train", "--resume", "--out", str(trained)]) == 0
    out = capsys.readouterr().out
    assert "mrlearn train: finished" in out and str(trained) in out
    assert json.loads((trained / "metrics.json").read_text())["final"] == before


@pytest.mark.parametrize("args, fragment", [
    (["--config", "unet_demo", "--set", "model.chanz=3"], "model.chanz: unknown option for model 'unet'"),
    (["--config", "nope.yaml"], "nope.yaml: config file not found"),
    (["--resume"], "no run to resume here (no config.yaml)"),
    (["--config", "unet_demo", "--set", "data.root=/does/not/exist"], "data.root: /does/not/exist is not a folder"),
])
def test_train_errors_are_one_line(args, fragment, capsys, tmp_path):
    assert main(["train", "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrlearn: error:") and fragment in err and "\n" not in err


def test_train_resume_without_checkpoint_is_an_error(capsys, tmp_path, data):
    assert main(["train"]) == 2
    assert "--config: missing" in capsys.readouterr().err
    assert main(["train", "--config", "unet_demo", "--resume", "--out", str(tmp_path / "none"), "--set", f"data.root={data}"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_reconstruct_checkpoint_writes_submission_files(trained, data, tmp_path, capsys):
    out = tmp_path / "sub"
    assert main(["reconstruct", "--checkpoint", str(trained / "checkpoints" / "best.ckpt"), "--data", str(data / "test"),
                 "--out", str(out)]) == 0
    assert "2 volumes (8 slices)" in capsys.readouterr().out
    for f in sorted((data / "test").glob("*.h5")):
        rec = read_reconstruction(out / f.name)
        assert rec.shape == (4, 32, 32) and rec.dtype == np.float32 and np.isfinite(rec).all()


def test_reconstruct_uses_the_file_mask_or_a_fixed_retrospective_mask(data, tmp_path):
    src = sorted((data / "test").glob("*.h5"))[0]
    k = read_kspace(src)
    own = np.zeros(k.shape[-1], dtype=np.float32)
    own[::3] = 1
    own[14:18] = 1
    folder = tmp_path / "masked"
    write_volume(folder / "with_mask.h5", k * own, acquisition="PD", mask=own, attrs={"acceleration": 3, "num_low_frequency": 4})
    assert main(["reconstruct", "--method", "zero-filled", "--data", str(folder), "--out", str(tmp_path / "a")]) == 0
    assert np.allclose(read_reconstruction(tmp_path / "a" / "with_mask.h5"), rss_target(k * own), rtol=1e-4, atol=1e-6)
    # fully sampled file: retrospective mask fixed by the file name
    assert main(["reconstruct", "--method", "zero-filled", "--data", str(src), "--out", str(tmp_path / "b"),
                 "--mask-type", "equispaced", "--acceleration", "4", "--center-fraction", "0.1"]) == 0
    m = EquiSpacedMaskFunc([0.1], [4])(k.shape[-2:], seed=file_seed(src.name))[0].numpy().reshape(-1)
    assert np.allclose(read_reconstruction(tmp_path / "b" / src.name), rss_target(k * m), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("extra, fragment", [
    (["--acceleration", "0.5"], "--acceleration: 0.5 is below 1"),
    (["--mask-type", "poisson", "--center-fraction", "0.1"], "--center-fraction: does not apply to poisson"),
    (["--center-fraction", "1.5"], "--center-fraction: 1.5 is not in (0, 1)"),
    (["--batch-size", "0"], "--batch-size: 0 is below 1"),
])
def test_reconstruct_option_errors(extra, fragment, data, tmp_path, capsys):
    assert main(["reconstruct", "--method", "zero-filled", "--data", str(data / "test"), "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err


def test_reconstruct_missing_checkpoint_or_data(tmp_path, data, capsys):
    assert main(["reconstruct", "--checkpoint", str(tmp_path / "x.ckpt"), "--config", "unet_demo", "--data", str(data / "test"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["reconstruct", "--method", "zero-filled", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["reconstruct", "--method", "magic", "--data", str(data / "test"), "--out", str(tmp_path / "o")]) == 2
    assert "unknown recon 'magic'" in capsys.readouterr().err


def test_resume_from_another_working_directory_evaluates_this_runs_best_checkpoint(data, tmp_path, monkeypatch):
    def train_here(*extra: str) -> None:
        args = ["train", "--config", "unet_demo", "--set", f"data.root={data}", "--set", "name=r"]
        for item in (*TINY_SET, "trainer.max_epochs=1", *extra):
            args += ["--set", item]
        assert main(args) == 0

    (tmp_path / "w1").mkdir()
    (tmp_path / "w2").mkdir()
    monkeypatch.chdir(tmp_path / "w1")
    train_here()  # w1/runs/r, checkpoint paths written while the working directory was w1
    monkeypatch.chdir(tmp_path / "w2")
    train_here("optim.lr=0.0")  # another run at the same relative path w2/runs/r, other weights
    mine = tmp_path / "w1" / "runs" / "r"
    before = json.loads((mine / "metrics.json").read_text())
    assert main(["train", "--resume", "--out", str(mine)]) == 0  # resumed from w2
    after = json.loads((mine / "metrics.json").read_text())
    assert after["evaluated"]["checkpoint"] == str(mine / "checkpoints" / "best.ckpt")
    assert after["best"]["checkpoint"] == str(mine / "checkpoints" / "best.ckpt")
    assert after["final"] == before["final"]


@pytest.mark.parametrize("extra", [["--set", "model.chans=8"], ["--set", "optim.lr=0.5"]])
def test_resume_with_another_config_is_refused_and_the_run_stays_resumable(trained, extra, capsys):
    config = (trained / "config.yaml").read_bytes()
    status = json.loads((trained / "run.json").read_text())
    assert main(["train", "--resume", "--out", str(trained), *extra]) == 2
    err = capsys.readouterr().err.strip()
    key = extra[1].split("=")[0]
    assert "\n" not in err and "--resume asks for another run" in err and key in err
    assert (trained / "config.yaml").read_bytes() == config and json.loads((trained / "run.json").read_text()) == status
    assert main(["train", "--resume", "--out", str(trained), "--set", "trainer.progress_bar=false"]) == 0  # allowed
