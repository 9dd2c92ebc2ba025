"""Several machines: SLURM pre-emption (Lightning's requeue, then an automatic resume that equals an uninterrupted
run) and two "nodes" on localhost started by torchrun (2 nodes x 1 process, gloo) equal to one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers_training import TINY_SET, tiny_config, tiny_dataset

from mrlearn.engine.cluster import newest_checkpoint
from mrlearn.engine.checkpoint import load_checkpoint
from mrlearn.errors import MrlearnError

STEPS = ["trainer.max_epochs=100", "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=1", "trainer.val_every=100"]

# `mrlearn train` that, after optimizer step 3, sends itself SIGUSR1 (SLURM's warning) and then SIGTERM (the kill).
PREEMPTED = textwrap.dedent("""
    import os, signal, sys
    import lightning as L
    import mrlearn.training.runner as runner
    from mrlearn.cli import main

    class Preempt(L.Callback):
        def on_train_batch_end(self, trainer, *rest):
            if trainer.global_step == 3 and not getattr(self, "done", False):
                self.done = True
                os.kill(os.getpid(), signal.SIGUSR1)
                os.kill(os.getpid(), signal.SIGTERM)

    make = runner.make_trainer
    runner.make_trainer = lambda cfg, run_dir, callbacks=(), **kw: make(cfg, run_dir, [*callbacks, Preempt()], **kw)
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("cluster") / "data")


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--config", "unet_demo", "--out", str(out), "--set", f"data.root={data}"]
    for item in (*TINY_SET, *STEPS, *extra):
        args += ["--set", item]
    return args


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _slurm_env(tmp_path: Path, restart: int) -> dict[str, str]:
    """A one-task SLURM batch job as Lightning reads it, with a fake `scontrol` that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC", "WORLD_SIZE", "RANK"))}
    env.update({"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "OMP_NUM_THREADS": "1",
                "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "mrlearn", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
                "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
                "SLURM_RESTART_COUNT": str(restart)})
    return env


def test_slurm_preemption_requeues_and_the_restarted_job_resumes_exactly(data, tmp_path):
    reference = tmp_path / "reference"
    from mrlearn.training.runner import train

    train(tiny_config(data, reference, *STEPS))
    out = tmp_path / "run"
    first = subprocess.run([sys.executable, "-c", PREEMPTED, *_args(data, out)], capture_output=True, text=True,
                           timeout=300, env=_slurm_env(tmp_path, 0))
    assert first.returncode == 143, first.stderr[-2000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # Lightning asked SLURM to requeue
    assert list(out.glob("hpc_ckpt_*.ckpt")), "Lightning's pre-emption checkpoint"
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    # SLURM starts the same job script again: same command, no --resume
    again = subprocess.run([sys.executable, "-m", "mrlearn.cli", *_args(data, out)], capture_output=True, text=True,
                           timeout=300, env=_slurm_env(tmp_path, 1))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "SLURM restarted the job" in again.stderr and f"resuming {out}" in again.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["resumed"] is True
    a, b = _weights(reference / "checkpoints" / "last.ckpt"), _weights(out / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_newest_checkpoint_prefers_more_steps_and_skips_broken_files(data, tmp_path):
    from mrlearn.training.runner import train

    run = train(tiny_config(data, tmp_path / "run", *STEPS)).run_dir
    last = run / "checkpoints" / "last.ckpt"
    assert newest_checkpoint(run, load_checkpoint) == last
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["global_step"] = 99
    torch.save(ckpt, run / "hpc_ckpt_1.ckpt")
    (run / "hpc_ckpt_2.ckpt").write_bytes(b"cut off")  # a pre-emption checkpoint killed while writing
    assert newest_checkpoint(run, load_checkpoint) == run / "hpc_ckpt_1.ckpt"
    ckpt["global_step"] = 6
    torch.save(ckpt, run / "hpc_ckpt_1.ckpt")
    assert newest_checkpoint(run, load_checkpoint) == last  # a tie goes to last.ckpt (a step boundary)


def test_num_nodes_must_be_a_count(data, tmp_path):
    with pytest.raises(MrlearnError, match="trainer.num_nodes"):
        tiny_config(data, tmp_path / "x", "trainer.num_nodes=0")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_nodes_on_localhost_equal_one_process(data, tmp_path):
    """torchrun on two "nodes" (node ranks 0 and 1, one process each, gloo) with batch 1 per process trains the
    same weights as one process with batch 2; both ranks share the run folder, rank 0 writes it."""
    from mrlearn.training.runner import train

    single = tmp_path / "single"
    sgd = "optim={name: sgd, lr: 0.01}"  # an update proportional to the gradient: float reordering stays ~1e-7
    train(tiny_config(data, single, "trainer.max_steps=2", "trainer.max_epochs=100", "trainer.val_every=100",
                      "data.batch_size=2", sgd))
    out, port = tmp_path / "nodes", _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_",))}
    env.update({"OMP_NUM_THREADS": "1"})
    cli = _args(data, out, "trainer.max_steps=2", "data.batch_size=1", sgd)
    cli += ["--nodes", "2", "--devices", "1", "--strategy", "ddp", "--accelerator", "cpu"]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               "-m", "mrlearn.cli", *cli], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=tmp_path) for rank in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished"
    ca, cb = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True) for d in (single, out))
    assert ca["global_step"] == cb["global_step"] == 2
    a, b = ca["state_dict"], cb["state_dict"]
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-6, f"largest weight difference {diff}"
