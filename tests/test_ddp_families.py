"""2-process DDP on CPU (gloo) equals 1 process for every method family on the shared engine.

Multi-task with a gradient-based weighting (MGDA: manual optimisation, per-task gradients summed over processes),
self-supervised SSDU, greedy layer-wise and convex layer-wise. Each runs the same global batches once with one
process (``batch_size = 2``) and once with two (``batch_size = 1`` each, rank r takes every other sample), in a
fresh interpreter (Lightning's DDP launcher re-runs the script); the final weights agree to float reordering.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = """
import sys
from mrlearn.config import load_config
kind, out, root, *sets = sys.argv[1:]
base = {"mtl": "mtl_tiny", "ssdu": "ssl_tiny", "greedy": "layerwise_greedy", "convex": "layerwise_convex"}[kind]
cfg = load_config(base, [f"data.root={root}", f"out_dir={out}", "trainer.accelerator=cpu",
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
               "trainer.max_epochs=2", "mask={name: random, accelerations: [4], center_fractions: [0.25]}"],
    "convex": ["model.num_blocks=2", "model.hidden=4", "model.kernel_size=3", "method.num_patterns=4",
               "method.patches_per_slice=40", "method.max_iter=200", "trainer.max_epochs=2",
               "mask={name: random, accelerations: [4], center_fractions: [0.25]}"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """2 train volumes x 2 slices per contrast (PD, T2), 1 val, 1 test; 24 x 24, 2 coils."""
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    opts = SimulationOptions(anatomy="phantom", matrix=(24, 24), slices=2, volumes=(2, 1, 1), contrasts=("PD", "T2"),
                             coils=2)
    return Path(simulate_dataset(tmp_path_factory.mktemp("ddpfam") / "data", opts))


def _run(tmp_path: Path, kind: str, out: str, root: Path, *extra: str) -> None:
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = [sys.executable, str(script), kind, str(tmp_path / out), str(root), *SETS[kind], *extra]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mtl", "ssdu", "greedy", "convex"])
def test_two_processes_equal_one(tmp_path, data, kind):
    _run(tmp_path, kind, "one", data, "data.batch_size=2")
    # greedy trains a different block per stage: DDP must be told that some parameters get no gradient
    strategy = "ddp_find_unused_parameters_true" if kind == "greedy" else "ddp"
    _run(tmp_path, kind, "two", data, "data.batch_size=1", "trainer.devices=2", f"trainer.strategy={strategy}")
    a = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
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
    if kind == "mtl":  # the samples each task saw are counted over both processes
        import json

        ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
        assert ma["samples_per_task"] == mb["samples_per_task"] and sum(ma["samples_per_task"].values()) == 4
        assert ma["tasks"].keys() == mb["tasks"].keys()
        for task in ma["tasks"]:
            assert mb["tasks"][task]["psnr"] == pytest.approx(ma["tasks"][task]["psnr"], abs=1e-3)
