"""Bad input to `mrlearn train` at the engine level: each case is one line on stderr and exit status 2 (or a correct
result where the input is fine, e.g. floats written 1e-4), never a traceback, never a silent wrong result."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_data import write_test_volume
from helpers_training import TINY_SET, tiny_dataset
from mrlearn.cli import main
from mrlearn.config import load_config, set_override
from mrlearn.data.fastmri import read_kspace, write_volume
from mrlearn.errors import MrlearnError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("inputs") / "data")


def cli_args(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--config", "unet_demo", "--out", str(out), "--set", f"data.root={data}"]
    for item in (*TINY_SET, "trainer.max_epochs=1", *extra):
        args += ["--set", item]
    return args


def one_line_error(capsys, fragment: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrlearn: error:") and "\n" not in err and fragment in err, err
    return err


def test_floats_written_with_an_exponent_are_numbers(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: exp\noptim: {name: adam, lr: 3e-4}\ntrainer: {gradient_clip_val: 1E1}\n")
    cfg = load_config(path, ["data.volume_fraction=5e-1"])
    assert cfg.optim["lr"] == pytest.approx(3e-4) and cfg.trainer.gradient_clip_val == 10.0
    assert cfg.data.volume_fraction == pytest.approx(0.5)
    raw: dict = {}
    set_override(raw, "optim.lr=1e-4")
    assert raw == {"optim": {"lr": 1e-4}}
    set_override(raw, "name=1e-4x")  # not a number: stays a string
    assert raw["name"] == "1e-4x"


@pytest.mark.parametrize("content, fragment", [
    (b"", "the config is empty"),
    (b"# only a comment\n\n   \n# another\n", "the config is empty"),
    (b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9"),
    (b"name: [unclosed\n", "not valid YAML"),
    (b"nme: x\n", "nme: unknown key"),
    (b"name: ../../escape\n", "name: '../../escape' would write outside runs"),
    (b"name: /tmp/absolute\n", "name: '/tmp/absolute' would write outside runs"),
])
def test_bad_config_files(tmp_path, capsys, content, fragment):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert main(["train", "--config", str(path)]) == 2
    one_line_error(capsys, fragment)
    assert not (Path("runs") / "escape").exists()


@pytest.mark.parametrize("extra, fragment", [
    (["data.num_workers=-1"], "data.num_workers: -1 is negative"),
    (["trainer.accelerator=tpu"], "trainer.accelerator: expected one of"),
    (["trainer.max_steps=0"], "trainer.max_steps: 0 is not at least 1"),
    (["trainer.early_stopping={patience: 0}"], "trainer.early_stopping: patience must be at least 1"),
    (["trainer.val_every_n_steps=0"], "trainer.val_every_n_steps: must be at least 1"),
    (["trainer.devices=3", "trainer.strategy=ddp"], "--devices 3: 2 val volume(s) for 3 processes"),
])
def test_bad_trainer_options(data, tmp_path, capsys, extra, fragment):
    assert main(cli_args(data, tmp_path / "run", *extra)) == 2
    one_line_error(capsys, fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_requested_without_gpu(data, tmp_path, capsys):
    assert main([*cli_args(data, tmp_path / "run"), "--accelerator", "gpu"]) == 2
    one_line_error(capsys, "trainer.accelerator: 'gpu' requested but no CUDA GPU is available")


def test_mlflow_logger_where_not_installed(data, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    try:
        import mlflow  # noqa: F401
    except ImportError:
        assert main(cli_args(data, tmp_path / "run", "trainer.logger=mlflow")) == 2
        one_line_error(capsys, "trainer.logger: mlflow is not installed")
    else:
        pytest.skip("mlflow is installed")


@pytest.mark.parametrize("content, fragment", [(b"", "checkpoint is empty (0 bytes)"),
                                               (b"PK\x03\x04" + b"\x00" * 60, "cannot load checkpoint, truncated")])
def test_resume_from_an_empty_or_truncated_checkpoint(data, tmp_path, capsys, content, fragment):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(content)
    assert main([*cli_args(data, out), "--resume"]) == 2
    one_line_error(capsys, fragment)


def _with_val(root: Path, data: Path) -> Path:
    shutil.copytree(data / "val", root / "val")
    shutil.copytree(data / "test", root / "test")
    return root


def test_supervised_training_on_files_without_targets_is_refused(data, tmp_path, capsys):
    root = _with_val(tmp_path / "testlike", data)
    for i, src in enumerate(sorted((data / "train").glob("*.h5"))):
        k = read_kspace(src)
        mask = np.zeros(k.shape[-1], dtype=np.float32)
        mask[::2] = 1
        write_volume(root / "train" / src.name, k * mask, acquisition="PD", mask=mask,
                     attrs={"acceleration": 2, "num_low_frequency": 0})
    assert main(cli_args(root, tmp_path / "run")) == 2
    err = one_line_error(capsys, "no target image in this train file")
    assert "PD_" in err and "self-supervised" in err


def test_batch_of_mixed_matrix_sizes_is_one_line(data, tmp_path, capsys):
    root = _with_val(tmp_path / "mixed", data)
    write_test_volume(root / "train" / "a.h5", slices=2, coils=4, h=32, w=32, seed=1, acquisition="PD")
    write_test_volume(root / "train" / "b.h5", slices=2, coils=4, h=40, w=32, seed=2, acquisition="PD")
    assert main(cli_args(root, tmp_path / "run", "data.batch_size=4")) == 2
    one_line_error(capsys, "data.batch_size: slices of different matrix sizes cannot share a batch")


def test_one_by_one_matrix_is_one_line(data, tmp_path, capsys):
    root = _with_val(tmp_path / "tiny", data)
    write_test_volume(root / "train" / "one.h5", slices=2, coils=2, h=1, w=1, seed=1, acquisition="PD", header=False,
                      recon=(1, 1))
    assert main(cli_args(root, tmp_path / "run")) == 2
    one_line_error(capsys, "one.h5: k-space matrix 1 x 1 is too small")


def test_a_closed_pipe_ends_quietly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mrlearn.cli", "train", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # like `| head` that has read enough
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err
