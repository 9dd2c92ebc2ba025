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
    (["data.cache_mb=-1"], "data.cache_mb: -1 is not a size in MB"),
    (["trainer.accelerator=tpu"], "trainer.accelerator: expected one of"),
    (["trainer.max_steps=0"], "trainer.max_steps: 0 is not at least 1"),
    (["trainer.early_stopping={patience: 0}"], "trainer.early_stopping: patience must be at least 1"),
    (["trainer.early_stopping={patience: 3, lr_patience: 3}"], "trainer.early_stopping: lr_patience 3 / lr_factor 0.5"),
    (["trainer.early_stopping={patience: 3, lr_patience: 1, lr_factor: 1.5}"], "need 1 <= lr_patience < patience"),
    (["trainer.val_every_n_steps=0"], "trainer.val_every_n_steps: must be at least 1"),
    (["trainer.devices=3", "trainer.strategy=ddp"], "--devices 3: 2 val volume(s) for 3 processes"),
    (["mask.accelerations=[1000]"], "mask center_fractions: 3 centre columns (fraction 0.08) exceed"),
    (["mask.accelerations=[1000]", "mask.center_fractions=[0.0]"],
     "mask accelerations: acceleration 1000 with centre fraction 0 samples no column at width 32"),
])
def test_bad_trainer_options(data, tmp_path, capsys, extra, fragment):
    assert main(cli_args(data, tmp_path / "run", *extra)) == 2
    one_line_error(capsys, fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_requested_without_gpu(data, tmp_path, capsys):
    assert main([*cli_args(data, tmp_path / "run"), "--accelerator", "gpu"]) == 2
    one_line_error(capsys, "trainer.accelerator: 'gpu' requested but no CUDA GPU is available")


def test_mlflow_logger_where_not_installed(data, tmp_path, capsys):
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


# ---------------------------------------------------------------- probe follow-ups (resume, outputs, qmri, study)

def _fake_checkpoint(out: Path, completed: int) -> Path:
    """A run folder whose last.ckpt says ``completed`` epochs are done (Lightning's loop state)."""
    (out / "checkpoints").mkdir(parents=True)
    progress = {"ready": completed, "started": completed, "processed": completed, "completed": completed}
    torch.save({"state_dict": {}, "epoch": completed, "global_step": 6 * completed,
                "loops": {"fit_loop": {"epoch_progress": {"total": progress, "current": progress}}}},
               out / "checkpoints" / "last.ckpt")
    (out / "run.json").write_text('{"status": "finished", "attempts": 1}')
    return out


def test_resume_with_fewer_epochs_than_trained_is_one_line_and_leaves_the_run_as_it_was(data, tmp_path, capsys):
    out = _fake_checkpoint(tmp_path / "run", completed=5)
    before = (out / "run.json").read_bytes()
    assert main([*cli_args(data, out, "trainer.max_epochs=2"), "--resume"]) == 2
    err = one_line_error(capsys, "trainer.max_epochs: 2 is below the 5 epochs")
    assert "trainer.max_epochs to 6 or more" in err
    assert (out / "run.json").read_bytes() == before and not (out / "config.yaml").exists()


def test_reconstruction_with_nan_or_inf_is_not_written(tmp_path):
    from mrlearn.commands.reconstruct import write_checked

    for bad in (np.nan, np.inf):
        pred = np.ones((2, 4, 4), np.float32)
        pred[1, 2, 3] = bad
        with pytest.raises(MrlearnError) as exc:
            write_checked(tmp_path / "v.h5", pred, "last.ckpt", "use another checkpoint")
        assert "v.h5: the reconstruction by last.ckpt holds NaN or Inf (1 of 32 pixels)" in str(exc.value)
        assert not list(tmp_path.iterdir())
    write_checked(tmp_path / "v.h5", np.ones((2, 4, 4), np.float32), "last.ckpt", "")
    assert (tmp_path / "v.h5").is_file()


def test_unreadable_checkpoint_is_reported_as_permissions(tmp_path, monkeypatch):
    import errno

    from mrlearn.engine import checkpoint

    path = tmp_path / "last.ckpt"
    path.write_bytes(b"PK" + b"\0" * 64)

    def denied(*_a, **_k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint.torch, "load", denied)
    with pytest.raises(MrlearnError, match=r"last.ckpt: cannot read the checkpoint \(Permission denied\); check"):
        checkpoint.load_checkpoint(path)


def _dwi(tmp_path: Path) -> tuple[Path, Path]:
    import nibabel as nib

    b = np.array([0, 10, 20, 50, 100, 200, 400, 800.0])
    x = np.zeros((6, 6, 1, b.size), np.float32)
    x[1:5, 1:5] = 1000 * np.exp(-b * 1e-3)
    nib.save(nib.Nifti1Image(x, np.eye(4)), str(tmp_path / "dwi.nii.gz"))
    (tmp_path / "b.txt").write_text(" ".join(f"{v:g}" for v in b))
    return tmp_path / "dwi.nii.gz", tmp_path / "b.txt"


@pytest.mark.parametrize("case, fragment", [
    ("bvals not UTF-8", "b.txt: not UTF-8 text (byte 0xe9"),
    ("out under a file", "cannot write (Not a directory)"),
    ("device foo", "--device: unknown device 'foo'"),
    ("sigma inf", "--sigma: must be positive and finite, got inf"),
    pytest.param("device cuda", "--device: cuda requested but no CUDA device is available here; use cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_qmri_fit_bad_input_is_one_line(tmp_path, capsys, case, fragment):
    dwi, bvals = _dwi(tmp_path)
    out, device = tmp_path / "maps", "cpu"
    if case == "bvals not UTF-8":
        bvals.write_bytes(b"0 10 \xe9 50\n")
    elif case == "out under a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "maps"
    extra = []
    if case == "sigma inf":
        extra = ["--sigma", "inf"]
    elif case.startswith("device"):
        device = case.split()[1]
    assert main(["qmri", "fit", "--dwi", str(dwi), "--bvals", str(bvals), "--out", str(out), "--device", device,
                 *extra]) == 2
    one_line_error(capsys, fragment)


def test_unreadable_bvalue_file_is_one_line(tmp_path, monkeypatch):
    import errno
    from pathlib import Path as P

    from mrlearn.qmri.signal import load_protocol

    path = tmp_path / "b.txt"
    path.write_text("0 100 800")

    def denied(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(P, "read_bytes", denied)
    with pytest.raises(MrlearnError, match=r"b.txt: cannot read the file \(Permission denied\)"):
        load_protocol(path)


@pytest.mark.parametrize("command", [
    ["evaluate", "--target", "{t}", "--pred", "{p}", "--out", "{bad}"],
    ["reconstruct", "--method", "zero-filled", "--data", "{t}", "--out", "{bad}"],
    ["convert", "{t}/v.h5", "{bad}/v"],
    ["simulate", "--out", "{bad}", "--anatomy", "phantom", "--matrix", "16", "16", "--subjects", "1", "0", "0",
     "--slices", "1", "--coils", "2", "--contrasts", "PD"],
])
def test_output_into_an_unwritable_folder_is_one_line(tmp_path, capsys, command):
    from mrlearn.data.fastmri import write_reconstruction

    write_test_volume(tmp_path / "t" / "v.h5")
    write_reconstruction(tmp_path / "p" / "v.h5", np.ones((2, 8, 12), np.float32))
    (tmp_path / "file").write_text("x")  # a file where a folder should be: mkdir fails (ENOTDIR) as on a read-only disk
    names = {"t": tmp_path / "t", "p": tmp_path / "p", "bad": tmp_path / "file" / "sub"}
    assert main([part.format(**names) for part in command]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1].split("\r")[-1]  # after any progress bar
    assert last.startswith("mrlearn: error:") and "file/sub" in last and "Traceback" not in err, err


def test_study_into_an_unwritable_folder_fails_at_once(tmp_path):
    import time

    import yaml

    from mrlearn.study import load_study, run_study

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "ro", "base": "unet_demo", "runner": "train", "seeds": [0]}))
    (tmp_path / "file").write_text("x")
    t0 = time.monotonic()
    with pytest.raises(MrlearnError, match="cannot write"):  # not a wait for a lock nobody holds
        run_study(load_study(path), tmp_path / "file" / "study", log=lambda _m: None)
    (tmp_path / "ok" / "runs").parent.mkdir()
    (tmp_path / "ok" / "runs").write_text("x")  # the study folder is writable, its runs/ is not
    with pytest.raises(MrlearnError, match="study run base__seed0: .*cannot write"):  # an error, not "busy"
        run_study(load_study(path), tmp_path / "ok", log=lambda _m: None)
    assert time.monotonic() - t0 < 30


def test_signal_inside_a_study_says_to_rerun_the_study(tmp_path, capsys):
    import yaml

    from mrlearn.errors import RunInterrupted
    from mrlearn.study import register_runner

    def stopped(cfg):
        raise RunInterrupted(15, "at step 3 (epoch 0)", None, f"mrlearn train --resume --out {cfg.out_dir}")

    register_runner("interrupted_test", stopped)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "sig", "base": "unet_demo", "runner": "interrupted_test", "seeds": [0]}))
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--set", "seeds=[0]"]) == 143
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("mrlearn: interrupted by SIGTERM at step 3")
    assert f"resume with: mrlearn study {path} --out {out} --set 'seeds=[0]'" in line and "mrlearn train" not in line


def test_reconstruction_far_from_the_zero_filled_energy_is_not_written(tmp_path):
    from mrlearn.commands.reconstruct import write_checked
    from mrlearn.data.checks import ENERGY_FACTOR

    zf = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    for factor in (ENERGY_FACTOR * 2, 1 / (ENERGY_FACTOR * 2)):  # diverged weights, a near-black image
        with pytest.raises(MrlearnError) as exc:
            write_checked(tmp_path / "v.h5", zf * factor, "last.ckpt", "use another checkpoint", zero_filled=zf)
        msg = str(exc.value)
        assert "v.h5: the reconstruction by last.ckpt has" in msg and "times the norm of the zero-filled" in msg
        assert "\n" not in msg and not list(tmp_path.iterdir())
    write_checked(tmp_path / "v.h5", zf * 1.3, "last.ckpt", "", zero_filled=zf)  # an ordinary reconstruction
    assert (tmp_path / "v.h5").is_file()
