"""What a lost worker costs a study: wall time of a tiny two-run U-Net study undisturbed and with one run's worker
killed (SIGKILL) at step 4 of 12, under the ``local`` and ``ray`` executors (2 workers, RAY_TMPDIR of its own).

Prints seconds per case, the ratio to the undisturbed run of the same executor (the peer), the step the killed
run resumed from, and whether study.csv equals the undisturbed one. Each run sleeps 0.35 s per training step (so a
kill lands mid-run); the numbers do not change.

    python benchmarks/study_recovery.py [--executors local ray]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PLUGIN = '''
import time
import lightning as L
from mrlearn.study import register_runner
from mrlearn.study.runner import train_runner


class Slow(L.Callback):
    def on_train_batch_end(self, *args, **kwargs):
        time.sleep(0.35)


def runner(cfg, resume=False):
    return train_runner(cfg, resume=resume, callbacks=[Slow()])


register_runner("slowtrain", runner)
'''
SET = ["model.chans=4", "model.num_pool_layers=2", "trainer.max_epochs=2", "trainer.val_every=1",
       "trainer.checkpoint_every_n_steps=2", "trainer.progress_bar=false", "trainer.accelerator=cpu",
       "data.batch_size=2", "data.contrasts=null"]
COLS = ("run_id", "group", "psnr", "ssim", "nmse", "steps", "best_step")


def setup(tmp: Path) -> Path:
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    root = simulate_dataset(tmp / "data", SimulationOptions(anatomy="phantom", matrix=(32, 32), slices=4,
                                                            subjects=(3, 2, 2), contrasts=("PD",), coils=4))
    (tmp / "slowtrain.py").write_text(PLUGIN)
    study = tmp / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "recovery", "base": "unet_demo", "runner": "slowtrain", "seeds": [0],
                                     "set": [f"data.root={root}", *SET],
                                     "arms": {"lr_low": {"optim.lr": 0.001}, "lr_high": {"optim.lr": 0.003}}}))
    return study


def rows(out: Path) -> list[tuple]:
    with open(out / "study.csv", newline="") as fh:
        return sorted(tuple(r.get(c) for c in COLS) for r in csv.DictReader(fh))


def step_of(ckpt: Path) -> int:
    import torch

    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))
    except Exception:  # noqa: BLE001 - being written
        return -1


def run(study: Path, out: Path, executor: str, env: dict[str, str], kill: bool) -> tuple[float, int | None]:
    cmd = [sys.executable, "-m", "mrlearn.cli", "study", str(study), "--out", str(out), "--executor", executor,
           "--workers", "2"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = out / "runs" / "lr_low__seed0"
    while kill and proc.poll() is None:
        info = json.loads((victim / "run.json").read_text()) if (victim / "run.json").is_file() else {}
        if info.get("status") == "running" and step_of(victim / "checkpoints" / "last.ckpt") >= 4:
            os.kill(int(info["pid"]), signal.SIGKILL)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=600)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{executor}: exit {proc.returncode}: {err[-2000:]}")
    resumed = json.loads((victim / "result.json").read_text())["extra"].get("resumed_from")
    return seconds, resumed["step"] if resumed else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executors", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    try:
        study = setup(tmp)
        env = {**os.environ, "PYTHONPATH": f"{tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "MRLEARN_PLUGINS": "slowtrain", "OMP_NUM_THREADS": "1", "RAY_TMPDIR": str(tmp)}
        print(f"{'executor':8} {'case':12} {'seconds':>8} {'ratio':>6} {'resumed from':>12} same study.csv")
        for executor in args.executors:
            base_s, _ = run(study, tmp / f"{executor}_undisturbed", executor, env, kill=False)
            kill_s, step = run(study, tmp / f"{executor}_killed", executor, env, kill=True)
            same = rows(tmp / f"{executor}_undisturbed") == rows(tmp / f"{executor}_killed")
            print(f"{executor:8} {'undisturbed':12} {base_s:8.1f} {1.0:6.2f} {'-':>12} -")
            print(f"{executor:8} {'worker kill':12} {kill_s:8.1f} {kill_s / base_s:6.2f} {step!s:>12} {same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
