"""Multi-task loss weightings under DDP: 2 processes on CPU (gloo) equal 1 process with the same global batch.

Loss-based weightings (equal, DWA, uncertainty; and DWA with the scarce task self-supervised, ``mtl_ssdu``) train with Lightning's automatic optimisation. A task absent from
a global batch leaves its parameters (task-specific cascade, uncertainty's ``s_t``) with ``grad = None`` in one
process, so Adam skips them; under DDP they must be skipped too, not stepped on an all-reduced zero gradient
(Adam's moments would move them). The data (PD 4 slices, T2 2 slices, global batch 2, shuffled) have batches
without T2 after T2 was seen, 9 steps over 3 epochs (DWA's weights leave 1 in the third). One interpreter fits
the three weightings in turn; the two ranks are started as a cluster launcher would (``tests/helpers_ddp.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers_ddp import fit_one_and_two, phantom_data

WEIGHTINGS = ("equal", "dwa", "uncertainty", "mtl_ssdu")  # mtl_ssdu: DWA, the scarce task self-supervised

SCRIPT = """
import os, sys
from mrlearn.config import load_config
from mrlearn.mtl.train import train_mtl
out, root, world = sys.argv[1], sys.argv[2], int(os.environ.get("WORLD_SIZE", 1))
for name in sys.argv[3:]:
    method = ["method={name: mtl_ssdu, ssl_tasks: [scarce], loss: {name: l1}, centre: [2, 2]}"] \
        if name == "mtl_ssdu" else []
    weighting = "dwa" if name == "mtl_ssdu" else name
    cfg = load_config("mtl_tiny", [*method, 
        f"data.root={root}", f"out_dir={out}/{name}", "trainer.accelerator=cpu", "trainer.progress_bar=false",
        "data.contrasts=null", "data.num_workers=0", f"data.batch_size={2 // world}",
        "tasks.tasks=[{name: pd, contrasts: [PD]}, {name: scarce, contrasts: [T2], slice_fraction: 0.5}]",
        f"tasks.weighting={{name: {weighting}}}", "model.cascades=2", "model.chans=4", "model.split=1",
        "trainer.max_epochs=3", "trainer.max_steps=-1", "trainer.val_every=100",
        *([f"trainer.devices={world}", "trainer.strategy=ddp"] if world > 1 else [])])
    train_mtl(cfg)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """2 train volumes x 2 slices per contrast (PD, T2), 1 val, 1 test; 24 x 24, 2 coils."""
    return phantom_data(tmp_path_factory.mktemp("ddpmtlw"), ("PD", "T2"), (2, 1, 1))


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory) -> Path:
    return fit_one_and_two(tmp_path_factory.mktemp("ddpmtlfit"), SCRIPT, [str(data), *WEIGHTINGS])


def test_the_batches_lack_a_task_that_was_seen_before():
    """The case under test happens: a global batch without T2 after a batch with T2 (its Adam moments non-zero)."""
    from mrlearn.mtl.data import MultiTaskBatchSampler

    sampler = MultiTaskBatchSampler([4, 2], "shuffled", 2, seed=0)
    batches = [b for e in range(3) for b in sampler.batches(e)]
    assert len(batches) == 9
    has_t2 = [any(i >= 4 for i in b) for b in batches]
    assert any(has_t2[:k].count(True) and not has_t2[k] for k in range(len(batches)))


@pytest.mark.slow
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_two_processes_equal_one(fitted, weighting):
    a = torch.load(fitted / "one" / weighting / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(fitted / "two" / weighting / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 9
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, va in a["state_dict"].items():
        vb = b["state_dict"][k]
        if isinstance(va, dict):  # DWA's extra state: the epoch-mean task losses
            assert va.keys() == vb.keys() and len(va["history"]) == 3, k
            assert vb["history"] == [pytest.approx(h, rel=1e-5) for h in va["history"]], k
        elif va.is_floating_point():
            assert torch.allclose(va, vb, rtol=1e-4, atol=1e-5), (k, float((va - vb).abs().max()))
    sa, sb = (x["optimizer_states"][0]["state"] for x in (a, b))
    assert sa.keys() == sb.keys()  # the same parameters were stepped (Adam state exists only for those)
    for i in sa:
        assert int(sa[i]["step"]) == int(sb[i]["step"]), i  # ... the same number of times
    assert any(int(s["step"]) < 9 for s in sa.values())  # some parameters were skipped in some steps
    ma, mb = (json.loads((fitted / d / weighting / "metrics.json").read_text()) for d in ("one", "two"))
    assert ma["samples_per_task"] == mb["samples_per_task"] == {"pd": 12, "scarce": 6}
    ha = {e["epoch"]: e for e in ma["history"]}
    hb = {e["epoch"]: e for e in mb["history"]}
    for epoch in (0, 1, 2):
        for task in ("pd", "scarce"):
            key = f"weight/{task}"
            assert hb[epoch][key] == pytest.approx(ha[epoch][key], rel=1e-5), (epoch, key)
    if weighting in ("dwa", "mtl_ssdu"):  # the third epoch trained with weights computed from the first two
        assert ha[1]["weight/pd"] != pytest.approx(1.0, abs=1e-6)


def test_methods_that_leave_parameters_unused_get_ddp_that_finds_them(tmp_path):
    """make_trainer: DDP finds unused parameters for greedy and MTL loss weightings, not for the others."""
    from lightning.pytorch.strategies import DDPStrategy

    from mrlearn.config import load_config
    from mrlearn.engine.trainer import ddp_strategy, make_trainer
    from mrlearn.errors import MrlearnError
    from mrlearn.layerwise.greedy import GreedyModule
    from mrlearn.mtl.module import MultiTaskModule
    from mrlearn.training.runner import build_method

    assert GreedyModule.ddp_unused_parameters is True
    for weighting, unused in (("equal", True), ("dwa", True), ("uncertainty", True), ("mgda", False)):
        cfg = load_config("mtl_tiny", [f"tasks.weighting={weighting}"])
        module = build_method(cfg)
        assert isinstance(module, MultiTaskModule) and module.ddp_unused_parameters is unused, weighting
    cfg = load_config("unet_demo", ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                                    "trainer.logger=csv"])
    for unused in (True, False):
        trainer, _ = make_trainer(cfg, tmp_path / f"run{unused}", unused_parameters=unused)
        assert isinstance(trainer.strategy, DDPStrategy)
        assert trainer.strategy._ddp_kwargs.get("find_unused_parameters", False) is unused
        assert trainer.strategy.process_group_backend == "gloo"
    assert ddp_strategy("auto", "cpu", True) == "auto" and ddp_strategy("fsdp", "gpu", True) == "fsdp"
    assert ddp_strategy("ddp", "gpu", False) == "ddp"  # on GPUs plain DDP is Lightning's own
    spawn = ddp_strategy("ddp_spawn", "cpu", True)
    assert spawn._start_method == "spawn" and spawn._ddp_kwargs["find_unused_parameters"] is True
    with pytest.raises(MrlearnError, match="trainer.strategy.*use ddp"):
        ddp_strategy("ddp_find_unused_parameters_false", "cpu", True)
