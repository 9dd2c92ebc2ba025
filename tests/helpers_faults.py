"""A tiny study whose training can be killed mid-way: phantom data, a U-Net that checkpoints every 2 steps, and a
runner (plugin ``slowtrain``) that sleeps after each step without changing the numbers (``SLOW_STEP_S`` seconds,
0.35 by default; 0 where nothing is killed: a reference run, a rerun)."""

from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import yaml

PLUGIN = '''
import os
import time
import lightning as L
from mrlearn.study import register_runner
from mrlearn.study.runner import train_runner


class Slow(L.Callback):
    """Sleeps after each training step (the numbers do not change): time for a test to kill the run."""

    def on_train_batch_end(self, *args, **kwargs):
        time.sleep(float(os.environ.get("SLOW_STEP_S", "0.35")))


def runner(cfg, resume=False):
    return train_runner(cfg, resume=resume, callbacks=[Slow()])


register_runner("slowtrain", runner)
'''

COLS = ("run_id", "arm", "seed", "group", "psnr", "ssim", "nmse", "steps", "best_step", "stopped_by")


def write_slow_study(tmp: Path) -> tuple[Path, Path]:
    """Data, the plugin module and the study YAML (two arms) under ``tmp``; returns ``(study, data root)``."""
    from helpers_training import TINY_SET, tiny_dataset

    root = tiny_dataset(tmp / "data")
    (tmp / "slowtrain.py").write_text(PLUGIN)
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "faults", "base": "unet_demo", "runner": "slowtrain", "seeds": [0],
                                    "set": [f"data.root={root}", *TINY_SET],
                                    "arms": {"lr_low": {"optim.lr": 0.001}, "lr_high": {"optim.lr": 0.003}}}))
    return path, root


def rows(out: Path) -> list[tuple]:
    """study.csv rows (the columns that carry results), sorted."""
    with open(out / "study.csv", newline="") as fh:
        return sorted(tuple(r.get(c) for c in COLS) for r in csv.DictReader(fh))


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, min_step: int = 4, timeout: float = 300) -> int:
    """The training pid in ``run``/run.json once its last.ckpt holds ``min_step`` steps or more."""
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


def assert_resumed(out: Path, run_id: str, min_step: int = 4) -> None:
    """The run finished after resuming (not restarting) from a checkpoint at ``min_step`` or later."""
    result = json.loads((out / "runs" / run_id / "result.json").read_text())
    info = json.loads((out / "runs" / run_id / "run.json").read_text())
    assert result["extra"]["resumed_from"]["step"] >= min_step, result["extra"]
    assert info["attempts"] == 2 and info["resumed"] is True, info
