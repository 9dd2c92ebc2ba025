"""Sharing a study folder: run locks, live holders left alone, stale folders rerun, concurrent processes, --set."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
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
def test_a_run_on_several_devices_is_refused_before_any_run(tmp_path, devices, n):
    """DDP inside a study: the relaunched ranks would rerun the study and join another run's process group."""
    path = _study(tmp_path)
    spec = load_study(path, [f"arms.b.trainer.devices={devices}", "trainer.strategy=ddp"])
    with pytest.raises(MrlearnError, match=rf"run b__seed0: trainer.devices: .* starts {n} processes \(DDP\)"):
        run_study(spec, tmp_path / "o", log=lambda s: None)
    assert not (tmp_path / "o" / "runs").exists()
    from mrlearn.study.checks import check_single_process

    auto = load_study(path, ["trainer.devices=auto", "trainer.accelerator=cpu"])  # auto on the CPU: one process
    check_single_process({r.run_id: run_config(auto, r, tmp_path / r.run_id) for r in auto.runs()})


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
