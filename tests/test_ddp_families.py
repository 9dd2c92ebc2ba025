"""2-process DDP on CPU (gloo) equals 1 process for every method family on the shared engine.

Multi-task with a gradient-based weighting (MGDA: manual optimisation, per-task gradients summed over processes;
the loss-based weightings are in ``test_ddp_mtl_weighting.py``), self-supervised SSDU, self-distillation (anchored,
and plain with its teacher centring), supervised unrolled (k-space loss), end-to-end, greedy (plain
``--strategy ddp``: the trainer lets DDP find the frozen blocks) and convex layer-wise. Each runs the same global
batches once with one process (``batch_size = 2``) and once with two (``batch_size = 1`` each, rank r takes every
other sample); the final weights agree to float reordering. To pay the interpreter start-up (torch + Lightning
imports) three times instead of once per family and process, one interpreter fits the families one after another,
and the two DDP ranks are started as a cluster launcher would (``tests/helpers_ddp.py``), each fitting the families
in the same order on one process group. (The supervised U-Net is in ``test_training_ddp.py``, qMRI networks in
``test_ddp_qmri.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers_ddp import launch

KINDS = ("mtl", "ssdu", "distill", "distill_plain", "unrolled", "e2e", "greedy", "convex")
BASES = {"mtl": "mtl_tiny", "ssdu": "ssl_tiny", "distill": "ssl_tiny", "distill_plain": "ssl_tiny",
         "unrolled": "unrolled_demo", "e2e": "layerwise_end_to_end", "greedy": "layerwise_greedy",
         "convex": "layerwise_convex"}

SCRIPT = """
import json, sys
from mrlearn.config import load_config
out, root, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
for kind, base, sets in plan:
    cfg = load_config(base, [f"data.root={root}", f"out_dir={out}/{kind}", "trainer.accelerator=cpu",
                             "trainer.progress_bar=false", "data.contrasts=null", "data.num_workers=0", *sets])
    if kind == "mtl":
        from mrlearn.mtl.train import train_mtl
        train_mtl(cfg)
    elif kind in ("ssdu", "distill", "distill_plain", "unrolled"):
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
    "distill": ["method={name: ssl_distill, rho: 0.4, centre: [2, 2], ema_momentum: 0.5}", "trainer.max_steps=2",
                "trainer.max_epochs=100", "trainer.val_every=100"],
    "distill_plain": ["method={name: ssl_distill, variant: plain, rho: 0.4, centre: [2, 2], ema_momentum: 0.5}",
                      "trainer.max_steps=2", "trainer.max_epochs=100", "trainer.val_every=100"],
    "unrolled": ["model.cascades=2", "model.chans=4", "model.num_blocks=1", "trainer.early_stopping=null",
                 "trainer.max_steps=2", "trainer.max_epochs=100", "trainer.val_every=100", "trainer.accelerator=cpu"],
    "e2e": ["model.num_blocks=2", "model.hidden=4", "model.kernel_size=3", "trainer.max_epochs=2",
            "mask={name: random, accelerations: [4], center_fractions: [0.25]}"],
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


def _launch(folder: Path, out: str, root: Path, world: int) -> None:
    """Fit every family in ``folder / out`` with ``world`` processes (1: plain; 2: DDP ranks started here)."""
    script = folder / "fit.py"
    script.write_text(SCRIPT)
    plan = []
    for kind in KINDS:
        extra = ["data.batch_size=2" if world == 1 else "data.batch_size=1"]
        if world > 1:
            extra += [f"trainer.devices={world}", "trainer.strategy=ddp"]
        plan.append([kind, BASES[kind], [*SETS[kind], *extra]])
    launch(script, [str(folder / out), str(root), json.dumps(plan)], world, folder)


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
