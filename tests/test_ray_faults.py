"""Studies on Ray that survive lost workers and nodes, resolve paths on the driver, and fail fast on bad addresses.

The tiny study trains two U-Nets on phantom data (tests/helpers_training.py) with a checkpoint every 2 steps; its
runner sleeps after each step so that a test can kill a run mid-way. Every Ray instance lives under its own short
RAY_TMPDIR (never /tmp/ray, which other sessions may use) and is stopped by the pids of its own processes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")  # optional extra: pip install "mrlearn[ray]"
psutil = pytest.importorskip("psutil")  # a dependency of Ray

pytestmark = pytest.mark.slow

PLUGIN = '''
import time
import lightning as L
from mrlearn.study import register_runner
from mrlearn.study.runner import train_runner


class Slow(L.Callback):
    """Sleeps after each training step (the numbers do not change): time for a test to kill the run."""

    def on_train_batch_end(self, *args, **kwargs):
        time.sleep(0.35)


def runner(cfg, resume=False):
    return train_runner(cfg, resume=resume, callbacks=[Slow()])


register_runner("slowtrain", runner)
'''

COLS = ("run_id", "arm", "seed", "group", "psnr", "ssim", "nmse", "steps", "best_step", "stopped_by")
MRLEARN = str(Path(sys.executable).with_name("mrlearn"))
RAY_CLI = str(Path(sys.executable).with_name("ray"))


def _rows(out: Path) -> list[tuple]:
    with open(out / "study.csv", newline="") as fh:
        return sorted(tuple(r.get(c) for c in COLS) for r in csv.DictReader(fh))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_ray_under(tmp: str) -> None:
    """Kill the processes of the Ray instance(s) whose files live under ``tmp`` (by pid, never `ray stop`)."""
    mine = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(tmp in part for part in proc.info["cmdline"] or ()):
                mine.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in mine:
        if proc.pid != os.getpid():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
    psutil.wait_procs(mine, timeout=10)


@pytest.fixture(scope="module")
def ray_tmp():
    """A short RAY_TMPDIR of this module's own (Unix socket paths must stay short)."""
    tmp = tempfile.mkdtemp(prefix="rf", dir="/tmp")
    yield tmp
    _stop_ray_under(tmp)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny slow-training study (data, plugin) and the study.csv of an undisturbed sequential run."""
    from helpers_training import TINY_SET, tiny_dataset

    from mrlearn.study import load_study, run_study

    tmp = tmp_path_factory.mktemp("ray_faults")
    root = tiny_dataset(tmp / "data")
    (tmp / "slowtrain.py").write_text(PLUGIN)
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "faults", "base": "unet_demo", "runner": "slowtrain", "seeds": [0],
                                    "set": [f"data.root={root}", *TINY_SET],
                                    "arms": {"lr_low": {"optim.lr": 0.001}, "lr_high": {"optim.lr": 0.003}}}))
    env = {"PYTHONPATH": str(tmp), "MRLEARN_PLUGINS": "slowtrain"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    sys.path.insert(0, str(tmp))
    import mrlearn.registry

    mrlearn.registry._LOADED.discard("plugins")
    try:
        reference = _rows(run_study(load_study(path), tmp / "undisturbed", log=lambda s: None))
        yield {"tmp": tmp, "study": path, "root": root, "reference": reference, "env": env}
    finally:
        sys.path.remove(str(tmp))
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _env(tiny, ray_tmp, **extra: str) -> dict[str, str]:
    return {**os.environ, **tiny["env"], "RAY_TMPDIR": ray_tmp, "OMP_NUM_THREADS": "1", **extra}


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, min_step: int = 4, timeout: float = 60) -> int:
    """The worker pid in ``run``/run.json once its last.ckpt holds ``min_step`` steps or more."""
    from mrlearn.study.resume import checkpoint_step

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
        ckpt = run / "checkpoints" / "last.ckpt"
        if info.get("status") == "running" and ckpt.is_file() and (checkpoint_step(ckpt) or 0) >= min_step:
            return int(info["pid"])
        time.sleep(0.05)
    raise AssertionError(f"{run}: no checkpoint at step {min_step} within {timeout} s")


def _assert_resumed(out: Path, run_id: str) -> None:
    result = json.loads((out / "runs" / run_id / "result.json").read_text())
    info = json.loads((out / "runs" / run_id / "run.json").read_text())
    assert result["extra"]["resumed_from"]["step"] >= 4, result["extra"]
    assert info["attempts"] == 2 and info["resumed"] is True, info  # continued, not started again


def test_a_killed_ray_worker_is_retried_and_resumes(tiny, ray_tmp, tmp_path):
    out = tmp_path / "o"
    t0 = time.perf_counter()
    proc = subprocess.Popen([MRLEARN, "study", str(tiny["study"]), "--out", str(out), "--executor", "ray",
                             "--workers", "2"], env=_env(tiny, ray_tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pid = _wait_for_checkpoint(out / "runs" / "lr_low__seed0", proc)
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    print(f"ray study with a killed worker: {time.perf_counter() - t0:.1f} s")
    assert proc.returncode == 0, stderr[-3000:]
    assert "lr_low__seed0: resuming from" in stdout + stderr
    _assert_resumed(out, "lr_low__seed0")
    assert _rows(out) == tiny["reference"]  # the same numbers as the undisturbed run
    assert not list(out.rglob("*.lock"))


def test_unreachable_address_is_one_line_within_30_s(tiny, ray_tmp, tmp_path):
    port = _closed_port()
    t0 = time.perf_counter()
    res = subprocess.run([MRLEARN, "study", str(tiny["study"]), "--out", str(tmp_path / "o"), "--executor", "ray",
                          "--address", f"127.0.0.1:{port}"], env=_env(tiny, ray_tmp), capture_output=True, text=True,
                         timeout=60)
    seconds = time.perf_counter() - t0
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and seconds < 30, (seconds, res.stderr[-2000:])
    assert len(err) == 1 and f"no Ray cluster answers at 127.0.0.1:{port}" in err[0] and "ray status" in err[0], err


def test_a_stale_cluster_file_neither_hangs_nor_is_joined(tiny, tmp_path):
    """A `ray_current_cluster` file of a dead `ray start`: plain --executor ray starts a fresh local instance;
    --address auto says in one line that the cluster is gone."""
    stale = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    try:
        (Path(stale) / "ray").mkdir()
        (Path(stale) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_closed_port()}")
        t0 = time.perf_counter()
        res = subprocess.run([MRLEARN, "study", str(tiny["study"]), "--out", str(tmp_path / "o"), "--executor", "ray",
                              "--address", "auto"], env=_env(tiny, stale), capture_output=True, text=True, timeout=60)
        err = res.stderr.strip().splitlines()
        assert res.returncode == 2 and time.perf_counter() - t0 < 30 and len(err) == 1, res.stderr[-2000:]
        assert "names a cluster that is gone" in err[0]
        t0 = time.perf_counter()
        cmd = [MRLEARN, "study", str(tiny["study"]), "--out", str(tmp_path / "o2"), "--executor", "ray", "--workers", "2",
               "--set", "arms=[lr_low]", "--set", "trainer.max_epochs=1"]
        proc = subprocess.Popen(cmd, env=_env(tiny, stale), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        run = tmp_path / "o2" / "runs" / "lr_low__seed0"
        while not (run / "run.json").is_file():  # a run started: Ray came up instead of hanging on the stale file
            assert proc.poll() is None and time.perf_counter() - t0 < 30, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        print(f"stale cluster file: local instance up and a run started after {time.perf_counter() - t0:.1f} s")
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-2000:]
    finally:
        _stop_ray_under(stale)
        shutil.rmtree(stale, ignore_errors=True)


def test_a_refused_token_is_named(monkeypatch):
    """What Ray prints when the head rejects the driver's token becomes the hint to set RAY_AUTH_MODE/RAY_AUTH_TOKEN."""
    from mrlearn.errors import MrlearnError
    from mrlearn.study import ray_executor

    class FakeRay:
        def init(self, **kwargs):
            os.write(2, b"gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: "
                        b"InvalidAuthToken: Authentication token is missing or incorrect\n")
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379")

    monkeypatch.setattr(ray_executor, "probe", lambda address, where, seconds=5.0: None)
    with pytest.raises(MrlearnError) as err:
        ray_executor.connect(FakeRay(), "10.0.0.5:6379", None)
    assert "refused this driver's authentication token" in str(err.value) and "RAY_AUTH_TOKEN" in str(err.value)
    assert "\n" not in str(err.value)
