"""Sharing a study folder: run locks, live holders left alone, stale folders rerun, concurrent processes, --set."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mrlearn.errors import MrlearnError
from mrlearn.study import RunOutcome, load_study, register_runner, run_config, run_study, study_from_dict

CALLS: list[str] = []


def share_runner(cfg) -> RunOutcome:
    CALLS.append(cfg.name)
    return RunOutcome(groups={"a": {"psnr": 30 + float(cfg.optim["lr"]), "ssim": 0.9, "nmse": 0.01}})


register_runner("share_test", share_runner)


def _study(tmp_path: Path, runner: str = "share_test", seeds=(0,)) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "sh", "base": "unet_demo", "runner": runner, "seeds": list(seeds),
                                    "arms": {"a": {"optim.lr": 0.1}, "b": {"optim.lr": 0.2}, "c": {"optim.lr": 0.3}}}))
    return path


def _hold(folder: Path, pid: int, name: str = ".study.lock") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "now"}))


def test_live_holder_is_left_alone_then_stale_folder_is_rerun(tmp_path):
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        b = out / "runs" / "b__seed0"
        _hold(b, holder.pid)
        (b / "partial.txt").write_text("work in progress")
        c = out / "runs" / "c__seed0"
        _hold(c, holder.pid, name=".lock")  # a training (engine run-folder lock) in progress
        CALLS.clear()
        log: list[str] = []
        run_study(load_study(_study(tmp_path)), out, log=log.append)
        assert CALLS == ["sh/a__seed0"]
        assert (b / "partial.txt").exists() and (c / ".lock").exists()  # nothing deleted under a live holder
        assert sum(f"process {holder.pid}" in line for line in log) == 2
        assert "(2 in progress in another process)" in (out / "report.html").read_text()
    finally:
        holder.kill()
        holder.wait()
    CALLS.clear()
    log = []
    run_study(load_study(_study(tmp_path)), out, log=log.append)
    assert sorted(CALLS) == ["sh/b__seed0", "sh/c__seed0"]
    assert not (b / "partial.txt").exists() and not (b / ".study.lock").exists()
    assert any("b__seed0: unfinished folder (no live holder) cleared" in line for line in log)
    assert len(list(csv.DictReader(open(out / "study.csv")))) == 3


SLOW = '''
import os, time
from pathlib import Path
from mrlearn.study import RunOutcome, register_runner

def runner(cfg):
    with open(os.environ["CALLS_FILE"], "a") as fh:
        fh.write(cfg.name + "\\n")
    time.sleep(1.0)
    return RunOutcome(groups={"a": {"psnr": 30 + float(cfg.optim["lr"]), "ssim": 0.9, "nmse": 0.01}})


register_runner("slowfake", runner)
'''


@pytest.mark.slow
def test_two_study_processes_share_one_folder(tmp_path):
    (tmp_path / "slowfake.py").write_text(SLOW)
    path = _study(tmp_path, runner="slowfake", seeds=(0, 1))
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "CALLS_FILE": str(calls), "OMP_NUM_THREADS": "1", "MRLEARN_PLUGINS": "slowfake"}
    cmd = [sys.executable, "-m", "mrlearn.cli", "study", str(path), "--out", str(tmp_path / "o")]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=280) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    names = calls.read_text().split()
    assert sorted(names) == sorted(set(names)) and len(names) == 6  # every run exactly once
    assert "Traceback" not in "".join(err for _, err in results)
    rows = list(csv.DictReader(open(tmp_path / "o" / "study.csv")))
    assert len(rows) == 6  # the last process to finish summarises every run
    assert not list((tmp_path / "o").rglob("*.lock"))


def test_names_and_ids_cannot_escape_the_study_folder(tmp_path):
    for name in ("../../x", "/abs/x", "a/b", ".."):
        with pytest.raises(MrlearnError, match="name"):
            study_from_dict({"name": name, "base": "unet_demo"}, "s.yaml")
    with pytest.raises(MrlearnError, match="arm names may hold only"):
        study_from_dict({"base": "unet_demo", "arms": {"../up": {}}}, "s.yaml")


def test_set_overrides_seeds_grid_arms_budget(tmp_path):
    path = _study(tmp_path)
    spec = load_study(path, ["seeds=[0, 1, 2]", "grid.model.chans=[4, 8]", "arms=[c, a]", "arms.c.optim.lr=1e-4",
                             "budget=equal_steps", "resources.gpus=0.25", "trainer.max_steps=5"])
    assert spec.seeds == [0, 1, 2] and spec.grid == {"model.chans": [4, 8]} and list(spec.arms) == ["c", "a"]
    assert spec.arms["c"] == {"optim.lr": 1e-4} and spec.budget == "equal_steps" and spec.resources == {"gpus": 0.25}
    assert spec.set == ["trainer.max_steps=5"] and len(spec.runs()) == 12
    assert load_study(path, ["grid.model.chans=[4]", "grid.model.chans=null"]).grid == {}
    with pytest.raises(MrlearnError, match="no arm 'zz'"):
        load_study(path, ["arms=[zz]"])
    with pytest.raises(MrlearnError, match="unknown budget policy"):
        load_study(path, ["budget=forever"])


def test_budget_policy_is_checked(tmp_path):
    path = _study(tmp_path)
    spec = load_study(path, ["budget=equal_steps", "arms.b.trainer.max_steps=7", "trainer.max_steps=5"])
    with pytest.raises(MrlearnError, match="equal_steps but trainer.max_steps differs: 5 \\(a__seed0\\), 7 \\(b__seed0\\)"):
        run_study(spec, tmp_path / "o", log=lambda s: None)
    with pytest.raises(MrlearnError, match="equal_steps but run a__seed0 has no trainer.max_steps"):
        run_study(load_study(path, ["budget=equal_steps"]), tmp_path / "o", log=lambda s: None)


@pytest.mark.parametrize("devices,n", [("2", 2), ("'0,1'", 2)])
def test_a_run_on_several_machines_is_refused_before_any_run(tmp_path, devices, n):
    """A study starts a run's processes on one machine: several devices are one run of n processes, several
    machines (trainer.num_nodes) are refused."""
    from mrlearn.study.ranks import process_count

    path = _study(tmp_path)
    spec = load_study(path, [f"arms.b.trainer.devices={devices}", "trainer.strategy=ddp", "arms.c.trainer.num_nodes=2"])
    configs = {r.run_id: run_config(spec, r, tmp_path / r.run_id) for r in spec.runs()}
    assert [process_count(configs[r]) for r in ("a__seed0", "b__seed0", "c__seed0")] == [1, n, 2]
    with pytest.raises(MrlearnError, match=r"run c__seed0: trainer.num_nodes: 2 machines, but a study starts a run's "
                                           r"processes on one machine only; use trainer.num_nodes=1"):
        run_study(spec, tmp_path / "o", log=lambda s: None)
    assert not (tmp_path / "o" / "runs").exists()
    auto = load_study(path, ["trainer.devices=auto", "trainer.accelerator=cpu"])  # auto on the CPU: one process
    assert {process_count(run_config(auto, r, tmp_path / r.run_id)) for r in auto.runs()} == {1}


def test_slice_count_larger_than_the_data_is_refused(tmp_path):
    from helpers_data import write_test_volume

    for i in range(2):
        write_test_volume(tmp_path / "data" / "train" / f"t{i}.h5", slices=3, seed=i)
        write_test_volume(tmp_path / "data" / "val" / f"v{i}.h5", slices=2, seed=10 + i)
    path = _study(tmp_path)
    common = [f"data.root={tmp_path / 'data'}", "data.contrasts=null"]
    with pytest.raises(MrlearnError, match="data.slice_count: 50 slices asked but the training data hold 6"):
        run_study(load_study(path, [*common, "data.slice_count=50"]), tmp_path / "o", log=lambda s: None)
    CALLS.clear()
    run_study(load_study(path, [*common, "data.slice_count=6"]), tmp_path / "o2", log=lambda s: None)
    assert len(CALLS) == 3


# --- leases: heartbeats, other hosts, expiry ----------------------------------------------------------------------

def _foreign_lease(folder: Path, age: float) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    lease = {"pid": 4242, "host": "gpu-node-07", "started": "2026-01-01T10:00:00", "command": "mrlearn study",
             "token": "t", "owner": "another-study", "heartbeat": time.time() - age, "heartbeat_every": 10.0,
             "expires_after": 30.0}
    (folder / ".study.lock").write_text(json.dumps(lease))
    return lease


def test_a_lease_from_another_host_is_respected_while_fresh_and_taken_over_once_expired(tmp_path, capsys):
    out = tmp_path / "o"
    b = out / "runs" / "b__seed0"
    _foreign_lease(b, age=5.0)  # renewed 5 s ago by a live node
    (b / "partial.txt").write_text("work of gpu-node-07")
    CALLS.clear()
    log: list[str] = []
    run_study(load_study(_study(tmp_path)), out, log=log.append)
    assert sorted(CALLS) == ["sh/a__seed0", "sh/c__seed0"] and (b / "partial.txt").exists()
    assert any("being run by process 4242 on gpu-node-07" in line and "left to it" in line for line in log)
    _foreign_lease(b, age=31.0)  # the node died: no heartbeat for longer than its 30 s expiry
    CALLS.clear()
    log = []
    run_study(load_study(_study(tmp_path)), out, log=log.append)
    assert CALLS == ["sh/b__seed0"] and not (b / "partial.txt").exists() and not (b / ".study.lock").exists()
    err = capsys.readouterr().err
    assert "taking over a stale lease of process 4242 on gpu-node-07" in err and "no heartbeat for 31 s" in err
    assert len(list(csv.DictReader(open(out / "study.csv")))) == 3


def test_a_held_lease_is_renewed_and_judged_by_its_own_expiry(tmp_path, monkeypatch):
    from mrlearn.io import FolderLock
    from mrlearn.lease import lease_settings, lease_state

    monkeypatch.setenv("MRLEARN_LEASE_HEARTBEAT", "0.1")
    assert lease_settings() == (0.1, pytest.approx(0.3))
    lock = FolderLock(tmp_path / "f").acquire()
    try:
        first = json.loads(lock.path.read_text())
        time.sleep(0.35)
        now = json.loads(lock.path.read_text())
        assert now["heartbeat"] > first["heartbeat"] and now["token"] == first["token"] and now["expires_after"] == pytest.approx(0.3)
        assert lease_state({**now, "host": "other-host"}) == "live"  # renewed: alive wherever it is
        assert lease_state({**now, "host": "other-host", "heartbeat": time.time() - 1}) == "expired"
        with pytest.raises(MrlearnError, match=r"in use by process \d+ on .*heartbeat \d+ s ago"):
            _other_process_acquire(tmp_path / "f")
    finally:
        lock.release()
    assert not lock.path.exists()
    monkeypatch.setenv("MRLEARN_LEASE_EXPIRY", "0.05")
    with pytest.raises(MrlearnError, match="MRLEARN_LEASE_EXPIRY: 0.05 s is not longer than the heartbeat"):
        lease_settings()
    monkeypatch.setenv("MRLEARN_LEASE_HEARTBEAT", "soon")
    with pytest.raises(MrlearnError, match="MRLEARN_LEASE_HEARTBEAT: 'soon' is not a positive number of seconds"):
        lease_settings()


def _other_process_acquire(folder: Path) -> None:
    """Acquire ``folder``'s lease in another process; its one-line error re-raised here."""
    code = ("import sys\nfrom mrlearn.io import FolderLock\nfrom mrlearn.errors import MrlearnError\n"
            f"try:\n    FolderLock({str(folder)!r}).acquire()\nexcept MrlearnError as e:\n    print(e); sys.exit(2)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if res.returncode == 2:
        raise MrlearnError(res.stdout.strip())
    raise AssertionError(res.stdout + res.stderr)


# --- killed studies and workers resume from their checkpoints -----------------------------------------------------

@pytest.fixture(scope="module")
def slow_study(tmp_path_factory):
    """The killable tiny study (tests/helpers_faults.py), its environment and the study.csv of an undisturbed run."""
    from helpers_faults import rows, write_slow_study

    tmp = tmp_path_factory.mktemp("slow_study")
    path, _ = write_slow_study(tmp)
    env = {**os.environ, "PYTHONPATH": f"{tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "MRLEARN_PLUGINS": "slowtrain", "OMP_NUM_THREADS": "1"}
    ref = subprocess.run([sys.executable, "-m", "mrlearn.cli", "study", str(path), "--out", str(tmp / "undisturbed")],
                         env={**env, "SLOW_STEP_S": "0"}, capture_output=True, text=True, timeout=240)
    assert ref.returncode == 0, ref.stderr[-2000:]
    return {"study": path, "env": env, "reference": rows(tmp / "undisturbed")}


@pytest.mark.slow
def test_a_killed_study_resumes_its_unfinished_run_on_rerun(slow_study, tmp_path):
    from helpers_faults import assert_resumed, rows, wait_for_checkpoint

    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "mrlearn.cli", "study", str(slow_study["study"]), "--out", str(out)]
    first = subprocess.Popen(cmd, env=slow_study["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(out / "runs" / "lr_low__seed0", first)
        os.kill(first.pid, 9)  # the whole study process: no handler runs, run.json stays "running"
        first.communicate(timeout=60)
    finally:
        first.kill()
    ckpt = out / "runs" / "lr_low__seed0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and not (out / "study.csv").exists()
    again = subprocess.run(cmd, env={**slow_study["env"], "SLOW_STEP_S": "0"}, capture_output=True, text=True,
                           timeout=240)  # nothing is killed now: no need to wait between steps
    assert again.returncode == 0, again.stderr[-2000:]
    assert "lr_low__seed0: resuming from" in again.stdout and "taking over a stale lease" in again.stderr
    assert_resumed(out, "lr_low__seed0")  # continued from its checkpoint, which the rerun did not delete
    assert rows(out) == slow_study["reference"]


@pytest.mark.slow
def test_a_killed_local_worker_is_retried_and_resumes_while_the_other_run_goes_on(slow_study, tmp_path):
    from helpers_faults import assert_resumed, rows, wait_for_checkpoint

    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "mrlearn.cli", "study", str(slow_study["study"]), "--out", str(out),
           "--executor", "local", "--workers", "2"]
    proc = subprocess.Popen(cmd, env=slow_study["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = wait_for_checkpoint(out / "runs" / "lr_low__seed0", proc)
        other = json.loads((out / "runs" / "lr_high__seed0" / "run.json").read_text())["pid"]
        os.kill(pid, 9)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert "lr_low__seed0: its worker process died; retry 1 of 3" in stderr
    assert_resumed(out, "lr_low__seed0")
    high = json.loads((out / "runs" / "lr_high__seed0" / "run.json").read_text())
    assert high["pid"] == other and high["attempts"] == 1  # the other run was not touched
    assert rows(out) == slow_study["reference"]


def test_relative_paths_are_made_absolute_where_the_study_starts(tmp_path, monkeypatch):
    from mrlearn.config import dump_config
    from mrlearn.study.paths import absolute_config_text, absolute_paths
    from mrlearn.study.runner import check_finished_runs_match

    monkeypatch.chdir(tmp_path)
    path = _study(tmp_path)
    spec = load_study(path, ["data.root=data/knee", "model.init=weights/w.pt"])
    run = spec.runs()[0]
    cfg = run_config(spec, run, tmp_path / "o" / "runs" / run.run_id)
    assert cfg.data.root == str(tmp_path / "data" / "knee") and cfg.model["init"] == str(tmp_path / "weights" / "w.pt")
    assert cfg.data.train == "train"  # a folder name inside data.root, not a path of its own
    raw = absolute_paths({"data": {"root": "~/k", "test": "t"}, "tasks": {"tasks": [{"root": "a"}, {"root": None},
                                                                                      {"root": "/abs"}]}})
    assert raw["data"]["root"] == os.path.expanduser("~/k") and raw["data"]["test"] == "t"
    assert [t["root"] for t in raw["tasks"]["tasks"]] == [str(tmp_path / "a"), None, "/abs"]
    # a run finished by an earlier version with the relative path is the same run
    folder = tmp_path / "o" / "runs" / run.run_id
    folder.mkdir(parents=True)
    old = dump_config(cfg).replace(str(tmp_path / "data" / "knee"), "data/knee")
    assert "root: data/knee" in old and "root: " + str(tmp_path / "data" / "knee") in absolute_config_text(old)
    (folder / "result.json").write_text(json.dumps({"status": "finished", "config": old}))
    check_finished_runs_match({run.run_id: cfg}, tmp_path / "o")


def test_a_retried_run_waits_for_its_lost_attempts_lease_on_another_host(tmp_path, capsys):
    """The executor retried a run whose node died: the lost attempt's lease (same study, another host) is waited for
    until it expires, then taken over; a live lease of another study is left alone at once."""
    from mrlearn.study.execute import Job, run_job

    spec = load_study(_study(tmp_path))
    run = spec.runs()[0]
    out = tmp_path / "o"
    job = Job(spec, run, str(out), share_runner, config=run_config(spec, run, out / "runs" / run.run_id), owner="me")
    lease = _foreign_lease(job.run_dir, age=0.0)
    CALLS.clear()
    t0 = time.monotonic()
    assert run_job(job)["status"] == "busy" and time.monotonic() - t0 < 1  # another study's live run
    (job.run_dir / ".study.lock").write_text(json.dumps({**lease, "owner": "me", "expires_after": 1.5,
                                                         "heartbeat": time.time()}))
    (job.run_dir / ".lock").write_text(json.dumps({**lease, "owner": None, "expires_after": 1.5,  # its training's
                                                   "heartbeat": time.time() + 0.5}))
    t0 = time.monotonic()
    result = run_job(job)
    assert result["status"] == "finished" and CALLS == [f"sh/{run.run_id}"]
    assert 1.5 < time.monotonic() - t0 < 6  # waited for both leases to expire, no longer
    assert "taking over a stale lease of process 4242 on gpu-node-07" in capsys.readouterr().err
