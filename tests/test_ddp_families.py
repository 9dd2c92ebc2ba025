"""2-process DDP on CPU (gloo) equals 1 process for every method family on the shared engine.

Multi-task with a gradient-based weighting (MGDA: manual optimisation, per-task gradients summed over processes),
self-supervised SSDU, greedy layer-wise and convex layer-wise. Each runs the same global batches once with one
process (``batch_size = 2``) and once with two (``batch_size = 1`` each, rank r takes every other sample); the final
weights agree to float reordering. To pay the interpreter start-up (torch + Lightning imports) three times instead of
twelve, one interpreter fits the four families one after another, and the two DDP ranks are started here as a
cluster launcher would (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` set: Lightning joins them instead of re-running the
script), each fitting the four families in the same order on one process group.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

KINDS = ("mtl", "ssdu", "greedy", "convex")

SCRIPT = """
import json, sys
from mrlearn.config import load_config
out, root, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
for kind, sets in plan:
    base = {"mtl": "mtl_tiny", "ssdu": "ssl_tiny", "greedy": "layerwise_greedy", "convex": "layerwise_convex"}[kind]
    cfg = load_config(base, [f"data.root={root}", f"out_dir={out}/{kind}", "trainer.accelerator=cpu",
                             "trainer.progress_bar=false", "data.contrasts=null", "data.num_workers=0", *sets])
    if kind == "mtl":
        from mrlearn.mtl.train import train_mtl
        train_mtl(cfg)
    elif kind == "ssdu":
        from mrlearn.training.runner import train
        train(cfg)
    else:
        from mrlearn.layerwise.train import train
        train(cfg)
"""

SETS = {
    "mtl": ["model.cascades=2", "model.chans=4", "model.split=1", "tasks.weighting=mgda", "trainer.max_steps=2",
            "trainer.max_epochs=100", "trainer.val_every=100", "data.contrasts=null"],
    "ssdu": ["trainer.max_steps=2", "trainer.max_epochs=100", "trainer.val_every=100"],
    "greedy": ["model.num_blocks=2", "model.hidden=4", "model.kernel_size=3", "method.epochs_per_block=1",
               "method.block_patience=null",
               "trainer.max_epochs=2", "mask={name: random, accelerations: [4], center_fractions: [0.25]}"],
    "convex": ["model.num_blocks=2", "model.hidden=4", "model.kernel_size=3", "method.num_patterns=4",
               "method.patches_per_slice=40", "method.max_iter=200", "trainer.max_epochs=2",
               "mask={name: random, accelerations: [4], center_fractions: [0.25]}"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """2 train volumes x 2 slices per contrast (PD, T2), 1 val, 1 test; 24 x 24, 2 coils."""
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    opts = SimulationOptions(anatomy="phantom", matrix=(24, 24), slices=2, subjects=(2, 1, 1), contrasts=("PD", "T2"),
                             coils=2)
    return Path(simulate_dataset(tmp_path_factory.mktemp("ddpfam") / "data", opts))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _launch(folder: Path, out: str, root: Path, world: int) -> None:
    """Fit every family in ``folder / out`` with ``world`` processes (1: plain; 2: DDP ranks started here)."""
    script = folder / "fit.py"
    script.write_text(SCRIPT)
    batch = "data.batch_size=2" if world == 1 else "data.batch_size=1"
    plan = []
    for kind in KINDS:
        extra = [batch]
        if world > 1:  # greedy trains a different block per stage: DDP must know some parameters get no gradient
            strategy = "ddp_find_unused_parameters_true" if kind == "greedy" else "ddp"
            extra += [f"trainer.devices={world}", f"trainer.strategy={strategy}"]
        plan.append([kind, [*SETS[kind], *extra]])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if world > 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world), NODE_RANK="0")
    args = [sys.executable, str(script), str(folder / out), str(root), json.dumps(plan)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)} if world > 1 else env)
             for r in range(world)]
    for rank, proc in enumerate(procs):
        try:
            _, err = proc.communicate(timeout=540)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        assert proc.returncode == 0, f"rank {rank} of {world}: {err[-3000:]}"


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddpfit")
    _launch(folder, "one", data, 1)
    _launch(folder, "two", data, 2)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_two_processes_equal_one(fitted, kind):
    a = torch.load(fitted / "one" / kind / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(fitted / "two" / kind / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] and (a["global_step"] > 0 or kind == "convex")  # convex: no optimizer
    assert a["state_dict"].keys() == b["state_dict"].keys()
    moved = 0
    for k, va in a["state_dict"].items():
        vb = b["state_dict"][k]
        assert va.shape == vb.shape, k
        if va.is_floating_point():
            assert torch.allclose(va, vb, rtol=1e-4, atol=1e-5), (k, float((va - vb).abs().max()))
            moved += 1
    assert moved > 0
    ma, mb = (json.loads((fitted / d / kind / "metrics.json").read_text()) for d in ("one", "two"))
    assert ma["steps"] == mb["steps"] and ma["stopped_by"] == mb["stopped_by"]  # the same convergence record
    if kind == "mtl":  # the samples each task saw are counted over both processes
        assert ma["samples_per_task"] == mb["samples_per_task"] and sum(ma["samples_per_task"].values()) == 4
        assert ma["tasks"].keys() == mb["tasks"].keys()
        for task in ma["tasks"]:
            assert mb["tasks"][task]["psnr"] == pytest.approx(ma["tasks"][task]["psnr"], abs=1e-3)
