"""Studies on Ray that survive lost workers and nodes, resolve paths on the driver, and fail fast on bad addresses.

The tiny study (tests/helpers_faults.py) trains two U-Nets on phantom data with a checkpoint every 2 steps; its
runner sleeps after each step so that a test can kill a run mid-way. Every Ray instance lives under its own short
RAY_TMPDIR (never /tmp/ray, which other sessions may use) and is stopped by the pids of its own processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from helpers_faults import assert_resumed, rows, wait_for_checkpoint, write_slow_study

ray = pytest.importorskip("ray")  # optional extra: pip install "mrlearn[ray]"

pytestmark = pytest.mark.slow

MRLEARN = str(Path(sys.executable).with_name("mrlearn"))
RAY_CLI = str(Path(sys.executable).with_name("ray"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_with_env(key: str, value: str) -> list[int]:
    """Processes whose environment holds ``key=value`` (Linux /proc): every process of a Ray instance started with it."""
    found, needle = [], f"{key}={value}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stop_ray_under(tmp: str) -> None:
    """Kill the processes of the Ray instance(s) started with RAY_TMPDIR=``tmp`` and their children (Ray's agents
    retitle themselves, which hides their environment), by pid, never `ray stop`."""
    pids = _pids_with_env("RAY_TMPDIR", tmp)
    todo = list(pids)
    while todo:
        kids = [k for k in _children(todo.pop()) if k not in pids]
        pids.extend(kids)
        todo.extend(kids)
    _kill(pids)


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
    from mrlearn.study import load_study, run_study

    tmp = tmp_path_factory.mktemp("ray_faults")
    path, root = write_slow_study(tmp)
    env = {"PYTHONPATH": str(tmp), "MRLEARN_PLUGINS": "slowtrain"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    sys.path.insert(0, str(tmp))
    import mrlearn.registry

    mrlearn.registry._LOADED.discard("plugins")
    try:
        os.environ["SLOW_STEP_S"] = "0"  # the reference is not killed: no waiting between its steps
        reference = rows(run_study(load_study(path), tmp / "undisturbed", log=lambda s: None))
        del os.environ["SLOW_STEP_S"]
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


def test_a_killed_ray_worker_is_retried_and_resumes(tiny, ray_tmp, tmp_path):
    out = tmp_path / "o"
    t0 = time.perf_counter()
    proc = subprocess.Popen([MRLEARN, "study", str(tiny["study"]), "--out", str(out), "--executor", "ray",
                             "--workers", "2"], env=_env(tiny, ray_tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pid = wait_for_checkpoint(out / "runs" / "lr_low__seed0", proc)
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        proc.kill()
    print(f"ray study with a killed worker: {time.perf_counter() - t0:.1f} s")
    assert proc.returncode == 0, stderr[-3000:]
    assert "lr_low__seed0: resuming from" in stdout + stderr
    assert_resumed(out, "lr_low__seed0")
    assert rows(out) == tiny["reference"]  # the same numbers as the undisturbed run
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
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        # not hanging on the file: a fresh instance starts (8-21 s on 2 free cores; the bound allows a busy machine)
        while not any("mrlearn: ray: started a local instance" in line for line in lines):
            assert proc.poll() is None and time.perf_counter() - t0 < 120, "".join(lines)[-2000:]
            time.sleep(0.1)
        print(f"stale cluster file: a fresh local instance up after {time.perf_counter() - t0:.1f} s")
        proc.wait(timeout=400)
        reader.join(timeout=10)
        assert proc.returncode == 0, "".join(lines)[-2000:]
        assert (tmp_path / "o2" / "study.csv").is_file()
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


TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def cluster(tiny):
    """A head and a second node (1 CPU each) on this machine, started by `ray start` in a directory of their own (the
    workers' working directory), with Ray's token authentication; stopped by the pids of their processes."""
    tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    cwd = Path(tmp) / "nodes"
    cwd.mkdir()
    port, node_port = _closed_port(), _closed_port()
    env = _env(tiny, tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    try:
        for args in (["--head", f"--port={port}", "--include-dashboard=false"],
                     [f"--address=127.0.0.1:{port}", f"--node-manager-port={node_port}"]):
            res = subprocess.run([RAY_CLI, "start", *args, "--num-cpus=1", "--disable-usage-stats"], cwd=cwd, env=env,
                                 capture_output=True, text=True, timeout=400)
            assert res.returncode == 0, res.stderr[-2000:]
        node2 = [p for p in _pids_with_env("RAY_TMPDIR", tmp)
                 if "raylet/raylet " in _cmdline(p) and f"--node_manager_port={node_port} " in _cmdline(p)]
        assert len(node2) == 1
        yield {"address": f"127.0.0.1:{port}", "env": env, "node2": node2[0], "cwd": cwd}
    finally:
        _stop_ray_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_a_lost_node_is_retried_on_another_and_paths_resolve_on_the_driver(tiny, cluster, tmp_path):
    """A run on the second node when that node dies (its raylet and everything under it killed) is retried on the
    head and resumes; the study names its data relative to the driver's directory, which the workers do not share."""
    work = tmp_path / "driver"
    work.mkdir()
    (work / "data").symlink_to(tiny["root"])
    spec = yaml.safe_load(tiny["study"].read_text())
    spec["set"] = ["data.root=data", *[s for s in spec["set"] if not s.startswith("data.root=")]]
    (work / "study.yaml").write_text(yaml.safe_dump(spec))
    assert not (cluster["cwd"] / "data").exists()
    t0 = time.perf_counter()
    proc = subprocess.Popen([MRLEARN, "study", "study.yaml", "--out", "o", "--executor", "ray", "--address",
                             cluster["address"]], cwd=work, env=cluster["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    victim = None
    try:
        from mrlearn.study.resume import checkpoint_step

        deadline = time.time() + 60
        while victim is None:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            for run in (work / "o" / "runs").glob("*"):
                info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
                ckpt = run / "checkpoints" / "last.ckpt"
                if (info.get("status") == "running" and _parent(info["pid"]) == cluster["node2"] and ckpt.is_file()
                        and (checkpoint_step(ckpt) or 0) >= 2):
                    assert os.readlink(f"/proc/{info['pid']}/cwd") == str(cluster["cwd"])  # not the driver's
                    victim = run.name
                    _kill([cluster["node2"], *_children(cluster["node2"])])  # the node and its workers
                    break
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        proc.kill()
    print(f"ray study on 2 nodes, one lost: {time.perf_counter() - t0:.1f} s")
    assert proc.returncode == 0, stderr[-3000:]
    assert f"{victim}: resuming from" in stdout
    result = json.loads((work / "o" / "runs" / victim / "result.json").read_text())
    assert result["extra"]["resumed_from"]["step"] >= 2 and json.loads(
        (work / "o" / "runs" / victim / "run.json").read_text())["attempts"] == 2
    assert rows(work / "o") == tiny["reference"]
    config = yaml.safe_load((work / "o" / "runs" / victim / "config.yaml").read_text())
    assert config["data"]["root"] == str(work / "data")  # made absolute on the driver


def test_a_driver_without_the_token_is_told_what_to_set(tiny, cluster, tmp_path):
    env = {k: v for k, v in cluster["env"].items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    t0 = time.perf_counter()
    res = subprocess.run([MRLEARN, "study", str(tiny["study"]), "--out", str(tmp_path / "o"), "--executor", "ray",
                          "--address", cluster["address"]], env=env, capture_output=True, text=True, timeout=90)
    seconds = time.perf_counter() - t0
    err = res.stderr.strip().splitlines()
    print(f"refused token reported after {seconds:.1f} s")
    assert res.returncode == 2 and seconds < 30 and len(err) == 1, (seconds, res.stderr[-2000:])
    assert "refused this driver's authentication token" in err[0] and "RAY_AUTH_TOKEN" in err[0]
