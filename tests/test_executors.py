"""Study executors: local worker processes and Ray tasks give the same study.csv as the sequential executor."""

from __future__ import annotations

import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from mrlearn.errors import MrlearnError
from mrlearn.study import load_study, run_study

FAKE = '''
import os
from mrlearn.study import RunOutcome, register_runner

def runner(cfg):
    """Deterministic stand-in for training; lr 0.5 is a bug, lr 0.7 a user error."""
    if float(cfg.optim["lr"]) == 0.5:
        raise RuntimeError("boom in the runner\\nsecond line")
    if float(cfg.optim["lr"]) == 0.7:
        from mrlearn.errors import MrlearnError
        raise MrlearnError("data.root: no volumes there; point it at the data folder")
    base = 30.0 + 10 * float(cfg.optim["lr"]) + 0.1 * cfg.seed
    slices = [{"group": "a", "fname": f"v{v}.h5", "slice": s, "psnr": base + 0.01 * s + 0.1 * v, "ssim": 0.9,
               "nmse": 0.01} for v in range(3) for s in range(2)]
    return RunOutcome(groups={"a": {"psnr": base, "ssim": 0.9, "nmse": 0.01}}, slices=slices,
                      extra={"pid": os.getpid(), "convergence": {"steps": 10, "best_step": 8,
                                                                 "stopped_by": "early_stopping", "converged": True}})


register_runner("execfake", runner)
'''

METRIC_COLS = ("run_id", "arm", "seed", "group", "psnr", "ssim", "nmse", "steps", "best_step", "stopped_by", "converged")


def _rows(out: Path) -> list[tuple]:
    with open(out / "study.csv", newline="") as fh:
        return sorted(tuple(r.get(c) for c in METRIC_COLS) for r in csv.DictReader(fh))


def _fake_study(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "execfake.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("MRLEARN_PLUGINS", "execfake")  # the user, not the study file, names the module
    import mrlearn.registry

    mrlearn.registry._LOADED.discard("plugins")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "ex", "base": "unet_demo", "runner": "execfake", "seeds": [0],
                                    "arms": {"low": {"optim.lr": 0.1}, "high": {"optim.lr": 0.3}},
                                    "summary": {"baseline": "low"}}))
    return path


@pytest.mark.parametrize("executor", ["sequential", "local", pytest.param("ray", marks=pytest.mark.slow)])
def test_failed_runs_are_one_line_each_and_the_others_finish(tmp_path, monkeypatch, capsys, executor, request):
    if executor == "ray":
        pytest.importorskip("ray")
        ray_tmp = tempfile.mkdtemp(prefix="rx", dir="/tmp")  # a short folder of its own, never /tmp/ray
        request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
        monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    from mrlearn.cli import main

    path = _fake_study(tmp_path, monkeypatch)
    spec = yaml.safe_load(path.read_text())
    spec["arms"].update({"bug": {"optim.lr": 0.5}, "bad": {"optim.lr": 0.7}})
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "o"
    assert main(["study", str(path), "--out", str(out), "--executor", executor, "--workers", "2"]) == 2
    std = capsys.readouterr()
    failed = [line for line in std.out.splitlines() if ": failed: " in line]
    bug = out / "runs" / "bug__seed0" / "error.log"
    assert sorted(line.split("] ")[1].split(":")[0] for line in failed) == ["bad__seed0", "bug__seed0"], std.out
    assert any(f"bug__seed0: failed: RuntimeError: boom in the runner; log: {bug}" in line for line in failed)
    assert any("bad__seed0: failed: data.root: no volumes there; point it" in line for line in failed)
    assert "Traceback" in bug.read_text() and "second line" in bug.read_text()  # the whole story is in the log
    err = std.err.strip().splitlines()
    assert err[-1].startswith("mrlearn: error: ") and "2 run(s) failed: " in err[-1] and "Traceback" not in std.err
    assert {r["arm"] for r in csv.DictReader(open(out / "study.csv"))} == {"low", "high"}  # the others finished


def test_executor_errors_are_one_line(tmp_path, monkeypatch):
    path = _fake_study(tmp_path, monkeypatch)
    with pytest.raises(MrlearnError, match="--workers: 0 is not a positive number"):
        run_study(load_study(path), tmp_path / "o", log=lambda s: None, executor="local", workers=0)
    with pytest.raises(MrlearnError, match="--address: only the ray executor"):
        run_study(load_study(path), tmp_path / "o", log=lambda s: None, executor="local", address="auto")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(MrlearnError, match=r'Ray is not installed; install it with: pip install "mrlearn\[ray\]"'):
        run_study(load_study(path), tmp_path / "o2", log=lambda s: None, executor="ray")
    assert not (tmp_path / "o2" / "runs").exists()  # refused before any run


def test_cli_ray_missing(tmp_path, monkeypatch, capsys):
    from mrlearn.cli import main

    path = _fake_study(tmp_path, monkeypatch)
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["study", str(path), "--out", str(tmp_path / "o"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mrlearn[ray]" in err[0]


# --- a real tiny study (U-Net, phantom data) through the executors -------------------------------------------------

@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> Path:
    from helpers_training import TINY_SET, tiny_dataset

    tmp = tmp_path_factory.mktemp("tiny_study")
    root = tiny_dataset(tmp / "data")
    path = tmp / "tiny_study.yaml"
    path.write_text(yaml.safe_dump({"name": "unet_tiny", "base": "unet_demo", "runner": "train", "seeds": [0],
                                    "set": [f"data.root={root}", *TINY_SET, "trainer.max_epochs=1"],
                                    "arms": {"lr_low": {"optim.lr": 0.001}, "lr_high": {"optim.lr": 0.003}}}))
    return path


@pytest.fixture(scope="module")
def tiny_sequential(tiny_study, tmp_path_factory) -> list[tuple]:
    out = run_study(load_study(tiny_study), tmp_path_factory.mktemp("seq") / "o", log=lambda s: None)
    return _rows(out)


@pytest.mark.slow
def test_tiny_study_local_equals_sequential(tiny_study, tiny_sequential, tmp_path):
    import json
    import os

    out = run_study(load_study(tiny_study), tmp_path / "o", log=lambda s: None, executor="local", workers=2)
    assert _rows(out) == tiny_sequential and len(tiny_sequential) == 2
    pids = {json.loads(p.read_text())["pid"] for p in (out / "runs").glob("*/run.json")}
    assert len(pids) == 2 and os.getpid() not in pids  # each run in its own worker process
    again: list[str] = []
    run_study(load_study(tiny_study), out, log=again.append, executor="local", workers=2)
    assert sum("finished before, skipped" in line for line in again) == 2


@pytest.mark.slow
def test_tiny_study_ray_equals_sequential(tiny_study, tiny_sequential, tmp_path):
    pytest.importorskip("ray")  # optional extra: pip install "mrlearn[ray]"
    t0 = time.perf_counter()
    out = run_study(load_study(tiny_study), tmp_path / "o", log=lambda s: None, executor="ray", workers=2)
    print(f"ray executor, 2 tiny runs on a local 2-CPU instance: {time.perf_counter() - t0:.1f} s")
    assert _rows(out) == tiny_sequential
