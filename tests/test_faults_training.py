"""Faults during `mrlearn train`: concurrent runs, SIGTERM/SIGINT, a kill after the end-of-epoch checkpoint, NaN and
overflow, a full disk. Each ends in a true one-line message and a run folder that can be resumed or trusted."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers_training import TINY_SET, run_python, tiny_config, tiny_dataset
from mrlearn.cli import main
from mrlearn.engine.checkpoint import load_checkpoint
from mrlearn.errors import MrlearnError
from mrlearn.training.runner import train

TESTS = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("faults") / "data")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults_ref") / "ref"
    return train(tiny_config(data, out))


def cli_args(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--config", "unet_demo", "--out", str(out), "--set", f"data.root={data}"]
    for item in (*TINY_SET, *extra):
        args += ["--set", item]
    return args


# A training process run through the CLI with one extra callback (hook name, action); prints nothing else.
CLI_WITH_CALLBACK = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    import lightning as L
    import mrlearn.training.runner as runner
    from mrlearn.cli import main

    hook, epoch_or_step, action, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]

    class Fault(L.Callback):
        pass

    def fire(self, trainer, *rest):
        at = trainer.global_step if hook == "on_train_batch_end" else trainer.current_epoch
        if at != epoch_or_step or getattr(self, "done", False):
            return
        self.done = True
        if action.startswith("wait:"):  # tell the test we hold the folder, then wait for its go
            flag = Path(action[5:])
            flag.with_suffix(".ready").write_text("1")
            while not flag.exists():
                time.sleep(0.05)
        else:
            os.kill(os.getpid(), getattr(signal, action))

    setattr(Fault, hook, fire)
    make = runner.make_trainer
    runner.make_trainer = lambda cfg, run_dir, callbacks=(), monitor=("val_ssim", "max"), **kw: make(
        cfg, run_dir, [*callbacks, Fault()], monitor, **kw)
    sys.exit(main(args))
""")


def run_cli_with_callback(hook: str, at: int, action: str, args: list[str], wait: bool = True):
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": TESTS}
    cmd = [sys.executable, "-c", CLI_WITH_CALLBACK, hook, str(at), action, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    proc.stdout_text, proc.stderr_text = out, err
    return proc


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_second_train_into_the_same_folder_is_refused_while_the_first_goes_on(data, tmp_path, capsys):
    out, flag = tmp_path / "run", tmp_path / "go"
    first = run_cli_with_callback("on_train_batch_end", 2, f"wait:{flag}", cli_args(data, out, "trainer.max_epochs=1"),
                                  wait=False)
    deadline = time.time() + 120
    while not flag.with_suffix(".ready").exists():
        assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() is not None else "timeout"
        time.sleep(0.1)
    assert main(cli_args(data, out, "trainer.max_epochs=1")) == 2
    err = capsys.readouterr().err.strip()
    assert f"in use by process {first.pid}" in err and "\n" not in err
    assert main([*cli_args(data, out, "trainer.max_epochs=1"), "--resume"]) == 2  # --resume does not bypass the lock
    flag.write_text("1")
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["pid"] == first.pid and info["attempts"] == 1
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("sig, step, code", [("SIGTERM", 3, 143), ("SIGINT", 8, 130), ("SIGHUP", 5, 129)])
def test_signal_saves_a_resumable_checkpoint_and_resume_equals_uninterrupted(data, reference, tmp_path, capsys,
                                                                            sig, step, code):
    out = tmp_path / "run"
    proc = run_cli_with_callback("on_train_batch_end", step, sig, cli_args(data, out))
    assert proc.returncode == code, proc.stderr_text[-2000:]
    lines = [line for line in proc.stderr_text.splitlines() if line.startswith("mrlearn")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr_text
    assert f"interrupted by {sig} at step {step}" in lines[0]
    assert f"resume with: mrlearn train --resume --out {out}" in lines[0]
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == step  # mid-epoch position kept
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert main(["train", "--resume", "--out", str(out)]) == 0
    a, b = weights(reference.last_checkpoint), weights(out / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (reference.run_dir, out))
    assert ma["history"] == mb["history"] and ma["final"] == mb["final"]


# A `mrlearn train` that sends itself a signal while it checks its training data: the run folder is open (run.json
# says "running"), no Lightning fit has started.
SIGNAL_BEFORE_TRAINING = textwrap.dedent("""
    import os, signal, sys
    import mrlearn.training.runner as runner
    from mrlearn.cli import main

    sig, args = sys.argv[1], sys.argv[2:]
    check = runner.check_targets

    def check_then_signal(*a, **k):
        check(*a, **k)
        os.kill(os.getpid(), getattr(signal, sig))

    runner.check_targets = check_then_signal
    sys.exit(main(args))
""")


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_signal_before_training_is_one_line_and_marks_the_run_interrupted(data, tmp_path, sig, code):
    import subprocess

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": TESTS}
    proc = subprocess.run([sys.executable, "-c", SIGNAL_BEFORE_TRAINING, sig, *cli_args(data, out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == code, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"mrlearn: interrupted by {sig}"), proc.stderr[-2000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted" and sig in info["error"]
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("hook", ["on_validation_start", "on_validation_end"])
def test_kill_after_the_last_step_of_an_epoch_keeps_exact_history(data, reference, tmp_path, hook):
    out = tmp_path / "run"
    proc = run_cli_with_callback(hook, 0, "SIGKILL", cli_args(data, out))
    assert proc.returncode == -9, proc.stderr_text[-2000:]
    resumed = train(tiny_config(data, out), resume=True)
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    ref = json.loads((reference.run_dir / "metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    assert got["history"] == ref["history"] and got["validation_curve"] == ref["validation_curve"]


def _csv_rows(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "csv" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return sorted(({k: v for k, v in r.items() if v != ""} for r in rows), key=lambda r: (int(r["step"]), sorted(r)))


@pytest.mark.parametrize("hook", ["on_validation_end", "finished"])
def test_csv_training_log_keeps_every_row_across_a_resume(data, tmp_path, hook):
    ref = tmp_path / "ref"
    train(tiny_config(data, ref, "trainer.logger=csv"))
    out = tmp_path / "run"
    if hook == "finished":  # resuming a finished run re-evaluates it
        train(tiny_config(data, out, "trainer.logger=csv"))
    else:  # killed right after the end-of-epoch checkpoint of epoch 0
        proc = run_cli_with_callback(hook, 0, "SIGKILL", cli_args(data, out, "trainer.logger=csv"))
        assert proc.returncode == -9, proc.stderr_text[-2000:]
    train(tiny_config(data, out, "trainer.logger=csv"), resume=True)
    rows, expected = _csv_rows(out), _csv_rows(ref)
    assert [r["step"] for r in rows] == [r["step"] for r in expected]  # no row lost, none twice
    assert rows == expected  # and the same values: the resumed run equals the uninterrupted one


def test_nan_from_a_huge_learning_rate_never_reaches_a_checkpoint(data, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(MrlearnError) as err:
        train(tiny_config(data, out, "optim={name: rmsprop, lr: 1e25}", "trainer.checkpoint_every_n_steps=1"))
    msg = str(err.value)
    assert "\n" not in msg and "non-finite" in msg or "loss is" in msg
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))
    for path in ckpts:
        assert f"{path} (step" in msg  # every file the message claims exists, and only those
        assert all(torch.isfinite(v).all() for v in weights(path).values() if v.is_floating_point())
    if not ckpts:
        assert "no checkpoint was written" in msg
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert not list(out.rglob("*.tmp"))


def test_adam_overflow_is_one_line(data, tmp_path):
    with pytest.raises(MrlearnError) as err:
        train(tiny_config(data, tmp_path / "o", "optim={name: adam, lr: 1e38}"))
    assert str(err.value).startswith("optim.lr: 1e+38") and "\n" not in str(err.value)


def test_nan_in_a_target_is_reported_as_a_data_problem(data, tmp_path):
    import shutil

    import h5py

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    victim = sorted((copy / "train").glob("*.h5"))[0]
    with h5py.File(victim, "r+") as f:
        key = "reconstruction_rss"
        f[key][1] = float("nan")
    with pytest.raises(MrlearnError) as err:
        train(tiny_config(copy, tmp_path / "run", "data.batch_size=1"))
    msg = str(err.value)
    assert msg.startswith(f"{victim.name}[slice 1]: the target") and "optim.lr" not in msg and "\n" not in msg


class _FullDisk:
    """A file object that accepts ``limit`` bytes and then fails like a full disk."""

    def __init__(self, real, limit: int = 64):
        self.real, self.limit = real, limit

    def write(self, data):
        if self.real.tell() + len(data) > self.limit:
            self.real.write(bytes(data)[: max(0, self.limit - self.real.tell())])
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def test_disk_full_while_writing_a_checkpoint(data, tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if "w" in mode and str(file).endswith(".ckpt.tmp"):
            return _FullDisk(fh)
        return fh

    monkeypatch.setattr(builtins, "open", full_open)
    out = tmp_path / "full"
    with pytest.raises(MrlearnError) as err:
        train(tiny_config(data, out))
    assert "no space left on the device" in str(err.value) and "\n" not in str(err.value)
    assert not list(out.rglob("*.tmp")) and not (out / ".lock").exists()
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "no space left" in info["error"]


def test_read_only_out_folder_is_one_line(data, tmp_path, monkeypatch, capsys):
    real = os.open
    target = str(tmp_path / "ro")

    def readonly(path, flags, *args, **kwargs):
        if str(path).startswith(target) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", readonly)
    assert main(cli_args(data, tmp_path / "ro")) == 2
    err = capsys.readouterr().err.strip()
    assert "folder is not writable" in err and "\n" not in err and "Traceback" not in err
