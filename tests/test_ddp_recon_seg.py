"""Joint reconstruction + segmentation under DDP: 2 processes on CPU (gloo) equal 1 process with the same global batch.

The recon_seg study's joint fit (``_fit_joint``: per-task selection of ``best_recon`` / ``best_seg`` and each task's
own stopping rule) of a hard-sharing Y-Net with the uncertainty weighting and a soft-sharing sluice network with DWA
(whose weights come from the epoch-mean task losses, so they must be the global means on every process), trained once
with one process (``batch_size = 2``) and once with two (``batch_size = 1`` each, rank r takes every other sample):
the weights, the optimizer state, the loss weights and task losses of every epoch, each task's selection (best step
and score) and the validation metrics agree to float reordering. The segmentation loss's soft Dice is a batch Dice
(sums over the batch), so under DDP it is computed on the global batch. The sluice network trains with SGD
(momentum): some of its gradient elements are ~0, where Adam's first steps (``lr`` times the sign) turn float
reordering into a full step (``training.optim``), which would hide what is compared here. 2 train volumes x 2
slices: 2 steps an epoch, 3 epochs (DWA's weights leave 1 in the third), validation every 2 steps on 2 validation
volumes (one per process). One interpreter fits both models; the two ranks are started as a cluster launcher would
(``tests/helpers_ddp.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers_ddp import fit_one_and_two, phantom_data

#: model -> (loss weighting, optimizer)
KINDS = {"ynet": ("uncertainty", "{name: adam, lr: 0.003}"), "sluice": ("dwa", "{name: sgd, lr: 0.01, momentum: 0.9}")}

SCRIPT = """
import json, os, sys
from mrlearn.study import load_study, run_config
from mrlearn.recon_seg.study import _fit_joint, run_section
out, root, world = sys.argv[1], sys.argv[2], int(os.environ.get("WORLD_SIZE", 1))
models = {"ynet": "{name: ynet, num_classes: 8, chans: 4, num_pools: 2}",
          "sluice": "{name: sluice, num_classes: 8, chans: 4, num_pools: 2, subspaces: 2}"}
for kind, (weighting, optim) in json.loads(sys.argv[3]).items():
    spec = load_study("recon_seg_tiny", [
        f"data.root={root}", "seeds=[0]", "grid=null", "arms=[ynet]", "summary.baseline=null", "stopping_check=null",
        f"arms.ynet.model={models[kind]}", f"method.weighting={{name: {weighting}}}", f"optim={optim}",
        "data.contrasts=null",
        f"data.batch_size={2 // world}", "trainer.max_steps=6", "trainer.val_every_n_steps=2",
        "trainer.limit_val_batches=1.0", "trainer.log_every_n_steps=1",
        *([f"trainer.devices={world}", "trainer.strategy=ddp"] if world > 1 else [])])
    run = spec.runs()[0]
    cfg = run_config(spec, run, f"{out}/{kind}")
    recon, seg, records, result = _fit_joint(cfg, run_section(cfg))
    if result.rank == 0:
        for r in records.values():
            r.pop("checkpoint", None)
        with open(f"{out}/{kind}/fit.json", "w") as fh:
            json.dump({"records": records, "metrics": result.metrics, "history": result.history}, fh)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """2 train volumes x 2 slices, 2 val volumes (one per process), 1 test; PD, 24 x 24, 2 coils, with labels."""
    return phantom_data(tmp_path_factory.mktemp("ddprs"), ("PD",), (2, 2, 1))


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory) -> Path:
    return fit_one_and_two(tmp_path_factory.mktemp("ddprsfit"), SCRIPT, [str(data), json.dumps(KINDS)])


def _fit(folder: Path, kind: str) -> tuple[dict, dict]:
    run = folder / kind
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True), json.loads((run / "fit.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_two_processes_equal_one(fitted, kind):
    (a, fa), (b, fb) = _fit(fitted / "one", kind), _fit(fitted / "two", kind)
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, va in a["state_dict"].items():
        vb = b["state_dict"][k]
        if isinstance(va, dict):  # DWA's extra state: the epoch-mean task losses (last.ckpt: at the last validation)
            assert len(va["history"]) == 2 and vb["history"] == [pytest.approx(h, rel=1e-5) for h in va["history"]], k
        elif va.is_floating_point():
            assert torch.allclose(va, vb, rtol=1e-4, atol=1e-5), (k, float((va - vb).abs().max()))
    sa, sb = (x["optimizer_states"][0]["state"] for x in (a, b))
    assert sa.keys() == sb.keys() and sa  # every parameter was stepped (Adam's steps / SGD's momentum)
    for i in sa:
        for key, va in sa[i].items():  # to float reordering, relative to the tensor's scale
            va, vb = torch.as_tensor(va).double(), torch.as_tensor(sb[i][key]).double()
            assert float((va - vb).abs().max()) <= 1e-4 * float(va.abs().max()) + 1e-9, (i, key)
    for epoch_a, epoch_b in zip(fa["history"], fb["history"], strict=True):
        for key in ("weight/recon", "weight/seg", "loss/recon", "loss/seg", "train_loss"):
            assert epoch_b[key] == pytest.approx(epoch_a[key], rel=1e-4), (epoch_a["epoch"], key)
    if KINDS[kind][0] == "dwa":  # the third epoch trained with weights computed from the first two
        assert fa["history"][1]["weight/recon"] != pytest.approx(1.0, abs=1e-6)
    assert fb["metrics"] == pytest.approx(fa["metrics"], rel=1e-4, abs=1e-6, nan_ok=True)
    for task in ("recon", "seg"):
        ra, rb = fa["records"][task], fb["records"][task]
        assert ra["validations"] == rb["validations"] == 3, task
        assert (rb["best_step"], rb["stopped_by"]) == (ra["best_step"], ra["stopped_by"]), task
        assert rb["best_score"] == pytest.approx(ra["best_score"], rel=1e-4), task
