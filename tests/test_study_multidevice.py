"""A study run on several processes (DDP): run by a child process whose Lightning starts the ranks, while the study
process keeps the lease and writes the row; rank 0 alone writes the run folder."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers_training import TINY_SET, tiny_dataset

from mrlearn.study import load_study, run_study

FAKE = '''
import json, os, time
from pathlib import Path

import numpy as np
import torch
from mrlearn.study import RunOutcome, register_runner


def runner(cfg, resume=False):
    """lr 0.5 fails; lr 0.3 leaves a checkpoint and waits for a signal unless resumed."""
    run_dir = Path(cfg.run_dir())
    lr = float(cfg.optim["lr"])
    if lr == 0.5:
        raise RuntimeError("boom in a rank\\nsecond line")
    if lr == 0.3 and not resume:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": 3}, run_dir / "checkpoints" / "last.ckpt")
        (run_dir / "run.json").write_text(json.dumps({"status": "running", "attempts": 1}))
        (run_dir.parent.parent / "child.pid").write_text(str(os.getpid()))
        time.sleep(300)
    info = {"pid": os.getpid(), "parent": os.getppid(), "resume": resume, "local_rank": os.environ.get("LOCAL_RANK"),
            "local_ranks": os.environ.get("MRLEARN_LOCAL_RANKS"), "threads": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS")}
    slices = [{"group": "a", "fname": "v.h5", "slice": s, "psnr": 30 + lr + s, "ssim": 0.9, "nmse": 0.01}
              for s in range(2)]
    return RunOutcome(groups={"a": {"psnr": 30 + lr, "ssim": 0.9, "nmse": 0.01}}, slices=slices, extra=info,
                      examples={"a": {"target": np.full((4, 4), lr), "input": np.zeros((4, 4)),
                                      "output": np.ones((4, 4))}})


register_runner("rankfake", runner)
'''


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "study.csv", newline="") as fh:
        return {r["run_id"]: r for r in csv.DictReader(fh)}


def _files(run_dir: Path) -> set[str]:
    """The run folder's files, TensorBoard event files by folder only (their names hold host, pid and time)."""
    return {str(p.parent.relative_to(run_dir) / "events") if "tfevents" in p.name else str(p.relative_to(run_dir))
            for p in run_dir.rglob("*") if p.is_file()}


def test_a_ddp_run_in_a_study_equals_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = tiny_dataset(tmp_path / "data")
    # SGD and the same global batch (2 x 1 vs 1 x 2): the same weights up to float reordering (test_training_ddp)
    common = [s for s in TINY_SET if not s.startswith("data.batch_size")]
    study = {"name": "md", "base": "unet_demo", "runner": "train", "seeds": [0],
             "set": [*common, f"data.root={data}", "trainer.max_epochs=1", "optim={name: sgd, lr: 0.05}"],
             "arms": {"one": {"data.batch_size": 2},
                      "two": {"data.batch_size": 1, "trainer.devices": 2, "trainer.strategy": "ddp"}},
             "summary": {"baseline": "one"}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    lines: list[str] = []
    out = run_study(load_study(tmp_path / "s.yaml"), tmp_path / "out", log=lines.append)
    assert any(line.startswith("[2/2] two__seed0: done in") for line in lines), lines
    rows = _rows(out)
    assert set(rows) == {"one__seed0", "two__seed0"}
    one, two = out / "runs" / "one__seed0", out / "runs" / "two__seed0"
    # written once, by rank 0 of a child process (not this one), never by the other rank
    info = json.loads((two / "run.json").read_text())
    assert info["status"] == "finished" and info["attempts"] == 1 and info["pid"] != os.getpid()
    assert info["command"][0].endswith("ranks_child.py") and info["study_run"]["run_id"] == "two__seed0"
    assert json.loads((two / "result.json").read_text())["status"] == "finished"
    events = [p for p in two.rglob("*") if "tfevents" in p.name]
    assert events and {p.name.split(".")[-2] for p in events} == {str(info["pid"])}
    assert _files(two) == _files(one)  # the same outputs as one process, no second copy, no lock left
    # the same training and the same test scores
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (one, two))
    assert a["global_step"] == b["global_step"] == 6
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], rtol=1e-4, atol=1e-5), k
    for key in ("psnr", "ssim", "nmse", "steps", "stopped_by"):
        x, y = rows["one__seed0"][key], rows["two__seed0"][key]
        assert (float(y) == pytest.approx(float(x), rel=1e-5)) if key in ("psnr", "ssim", "nmse") else x == y, key
    sa, sb = ((d / "slices.csv").read_text().splitlines() for d in (one, two))
    assert len(sa) == len(sb) == 1 + 2 * 4  # 2 test volumes x 4 slices
    for ra, rb in zip(csv.DictReader(sa), csv.DictReader(sb)):
        assert (ra["fname"], ra["slice"], ra["subject"]) == (rb["fname"], rb["slice"], rb["subject"])
        assert float(rb["psnr"]) == pytest.approx(float(ra["psnr"]), rel=1e-4)


def _fake(tmp_path: Path, monkeypatch, arms: dict) -> Path:
    (tmp_path / "rankfake.py").write_text(FAKE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("MRLEARN_PLUGINS", "rankfake")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mrlearn.registry

    mrlearn.registry._LOADED.discard("plugins")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "fk", "base": "unet_demo", "runner": "rankfake", "seeds": [0],
                                    "set": ["trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp"],
                                    "arms": arms, "summary": {"baseline": next(iter(arms))}}))
    return path


def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_a_signal_stops_the_child_a_rerun_resumes_it_and_a_failure_is_one_line(tmp_path, monkeypatch):
    from mrlearn.errors import MrlearnError, RunInterrupted

    path = _fake(tmp_path, monkeypatch, {"a": {"optim.lr": 0.3}, "b": {"optim.lr": 0.5}})  # a waits, b fails
    out = tmp_path / "out"

    def stop(signum, frame):  # what mrlearn's command line does on SIGTERM
        raise RunInterrupted(signum, "in the study process", None, "the same command again")

    done = threading.Event()

    def send_when_started():  # SIGTERM to the study process only (here: this one), once the run's child waits
        while not done.is_set():
            if (out / "child.pid").is_file():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.2)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        threading.Thread(target=send_when_started, daemon=True).start()
        with pytest.raises(RunInterrupted) as stopped:
            run_study(load_study(path), out, log=lambda s: None)
    finally:
        done.set()
        signal.signal(signal.SIGTERM, previous)
    child = int((out / "child.pid").read_text())
    assert child != os.getpid() and _gone(child, 10)
    # passed on: the child stopped on its own SIGTERM, and the study reports where the child stopped
    assert stopped.value.signum == signal.SIGTERM and stopped.value.where == "outside a training step"
    assert not (out / "runs" / "a__seed0" / "result.json").exists() and not (out / "runs" / "b__seed0").exists()

    lines: list[str] = []
    with pytest.raises(MrlearnError, match="1 run.s. failed: b__seed0"):
        run_study(load_study(path), out, log=lines.append)
    assert any(line.startswith("[1/2] a__seed0: resuming from") for line in lines), lines
    result = json.loads((out / "runs" / "a__seed0" / "result.json").read_text())
    extra = result["extra"]
    assert extra["resume"] is True and extra["parent"] == os.getpid() and extra["pid"] != os.getpid()
    assert extra["local_rank"] is None and extra["local_ranks"] == "1"
    assert extra["resumed_from"]["step"] == 3 and result["groups"]["a"]["psnr"] == pytest.approx(30.3)
    import numpy as np

    with np.load(out / "runs" / "a__seed0" / "examples.npz") as npz:
        assert np.allclose(npz["a/target"], 0.3) and npz["a/target"].shape == (4, 4)
    log = out / "runs" / "b__seed0" / "error.log"
    assert [line for line in lines if ": failed: " in line] == \
        [f"[2/2] b__seed0: failed: RuntimeError: boom in a rank; log: {log}"]
    assert "ranks_child" in log.read_text() and "second line" in log.read_text()  # the child's own traceback
    assert set(_rows(out)) == {"a__seed0"}


def test_local_executor_and_ray_resources(tmp_path, monkeypatch):
    from mrlearn.study import run_config
    from mrlearn.study.runner import run_resources

    path = _fake(tmp_path, monkeypatch, {"ok": {"optim.lr": 0.1}})
    spec = load_study(path)
    out = run_study(spec, tmp_path / "out", log=lambda s: None, executor="local", workers=2)
    extra = json.loads((out / "runs" / "ok__seed0" / "result.json").read_text())["extra"]
    assert extra["pid"] != os.getpid() and extra["parent"] != os.getpid()  # a worker process, then its child
    share = max(1, (os.cpu_count() or 1) // 2 // 2)  # a worker's cores (2 workers), shared by the run's 2 ranks
    assert extra["threads"] == share and extra["omp"] == str(share)
    assert set(_rows(out)) == {"ok__seed0"}

    run = spec.runs()[0]
    cfg = run_config(spec, run, out / "runs" / run.run_id)
    assert run_resources(spec, cfg, "ray", None) == {"cpus": 2.0, "gpus": 0.0}  # one CPU per process
    cfg.trainer.accelerator = "gpu"
    assert run_resources(spec, cfg, "ray", None) == {"cpus": 2.0, "gpus": 2.0}
    cfg.trainer.devices = 1
    assert run_resources(spec, cfg, "ray", None) == {"cpus": 1.0, "gpus": 1.0}
