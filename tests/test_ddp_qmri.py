"""qMRI network training: 2-process DDP on CPU (gloo) equals 1 process.

``mrlearn qmri train``'s function with the self-supervised label and init from a groundtruth network (two fits in
one script, so the second reuses the process group) on 400 simulated signals with the global batch
``batch_size = 60`` (``--batch-size``): once in this process, once with two processes of 30 each (rank r takes every
other signal of the epoch's order). With these settings the groundtruth fit stops early (its validation loss goes up by > 5 % after the
best epoch, far above float reordering), so the early-stopping decision is exercised on every rank, and the
self-supervised fit runs to the epoch cap. Rank 1 runs with every file writer
replaced by an error: only rank 0 may write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SETTINGS = dict(label="ss", snr="30", model="ivim", n_train=400, patience=1, max_epochs=6, seed=0,
                optim={"name": "adam", "lr": 1e-2}, init_from_gt=True)

SCRIPT = """
import json, sys
from pathlib import Path
import mrlearn.engine.runfolder, mrlearn.io, mrlearn.qmri.netio
from mrlearn.engine.cluster import process_rank
from mrlearn.qmri.train import train_for_protocol

out, bvals, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
rank = process_rank()
if rank != 0:
    def refuse(*args, **kwargs):
        raise AssertionError(f"rank {rank} tried to write a file")
    for mod in (mrlearn.io, mrlearn.engine.runfolder):
        mod.write_json = mod.atomic_write_text = mod.atomic_write_bytes = refuse
    mrlearn.qmri.netio.save_network = refuse
record = train_for_protocol(bvals, out, batch_size=60, devices=2, strategy="ddp", log=lambda *a: None, **settings)
(Path(out).parent / f"record_rank{rank}.json").write_text(json.dumps(record))
"""

SAME = ("steps", "epochs", "validations", "best_step", "best_epoch", "stopped_by", "converged", "init_from_gt")


def _weights(path: Path, key: str) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)[key]


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path):
    from mrlearn.qmri.train import train_for_protocol

    bvals = tmp_path / "bvals.txt"
    bvals.write_text("0 10 20 30 50 80 100 200 400 800\n")
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "two"), str(bvals), json.dumps(SETTINGS)],
                          capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one = train_for_protocol(bvals, tmp_path / "one", batch_size=60, log=lambda *a: None, **SETTINGS)

    ranks = [json.loads((tmp_path / f"record_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the same record (and stopping decision) on every rank, bit for bit
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two == ranks[0]
    assert (two["batch_size"], two["batch_size_per_device"]) == (60, 30)
    assert (one["batch_size"], one["batch_size_per_device"]) == (60, 60)
    for name in ("gt_init", "ss"):
        a, b = one["runs"][name], two["runs"][name]
        assert a["world_size"] == 1 and b["world_size"] == 2
        assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}, name
        # validation loss over all 40 validation signals (20 per rank, summed): equal up to float32 summation order
        assert b["best_val_loss"] == pytest.approx(a["best_val_loss"], rel=1e-5), name
    assert one["runs"]["gt_init"]["stopped_by"] == "early_stopping" and one["runs"]["gt_init"]["epochs"] < 6
    assert one["runs"]["ss"]["stopped_by"] == "max_epochs" and one["runs"]["ss"]["epochs"] == 6
    assert one["runs"]["ss"]["steps"] == 6 * 6  # 360 training signals / 60 per global batch, 6 epochs

    # weights: the returned (best-epoch) network and each fit's last checkpoint agree to float reordering
    checks = [[(tmp_path / d / "network.pt", "state") for d in ("one", "two")]]
    checks += [[(tmp_path / d / sub / "checkpoints" / "last.ckpt", "state_dict") for d in ("one", "two")]
               for sub in ("gt_init", "net")]
    for (pa, ka), (pb, kb) in checks:
        wa, wb = _weights(pa, ka), _weights(pb, kb)
        assert wa.keys() == wb.keys()
        for k in wa:
            if wa[k].is_floating_point():
                assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5), (pa, k, float((wa[k] - wb[k]).abs().max()))
    start = _weights(tmp_path / "two" / "gt_init" / "checkpoints" / "last.ckpt", "state_dict")
    final = _weights(tmp_path / "two" / "net" / "checkpoints" / "last.ckpt", "state_dict")
    assert any(not torch.equal(start[k], final[k]) for k in start if k.startswith("net."))  # training moved them
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["status"] == "finished"
    assert not list((tmp_path / "two").rglob("*.tmp")) and not (tmp_path / "two" / ".lock").exists()


@pytest.mark.parametrize("n", [12, 13])
def test_sharded_batches_make_the_one_process_batches(n):
    from mrlearn.qmri.sharding import SignalBatches

    one = SignalBatches(n, 6, seed=3)
    ranks = [SignalBatches(n, 3, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        per_rank = [list(s) for s in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0])
        merged = [sorted(a + b) for a, b in zip(*per_rank)]
        if n % 2 == 0:  # a multiple of the world size: exactly the one-process batches
            assert merged == [sorted(b) for b in one]
        else:  # wrapped around: every row once, plus the first row of the order once more
            assert sorted(sum(merged, [])) == sorted(list(range(n)) + [one.rows()[0]])
    assert [sorted(b) for b in SignalBatches(n, 6, seed=3)] != [sorted(b) for b in one]  # epoch 1 reshuffled
    val = [SignalBatches(n, 4, shuffle=False, rank=r, world_size=2, pad=False) for r in (0, 1)]
    rows = sorted(i for v in val for b in v for i in b)
    assert rows == list(range(n)) and [len(v) for v in val] == [len(list(v)) for v in val]


@pytest.mark.parametrize("batch, devices, match", [(7, 2, "7 signals cannot be shared equally by 2 devices"),
                                                    (0, 1, "must be >= 1")])
def test_batch_size_is_global_and_must_divide(tmp_path, capsys, batch, devices, match):
    from mrlearn.cli import main
    from mrlearn.qmri.train import per_device_batch

    assert per_device_batch(256, 1) == 256 and per_device_batch(256, 4) == 64 and per_device_batch(60, "2") == 30
    (tmp_path / "b.txt").write_text("0 10 20 30 50 80 100 200 400 800\n")
    rc = main(["qmri", "train", "--bvals", str(tmp_path / "b.txt"), "--batch-size", str(batch), "--devices",
               str(devices), "--strategy", "ddp", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and err.count("\n") == 1 and err.startswith("mrlearn: error: --batch-size")
    assert not (tmp_path / "r").exists()  # refused before a run folder or a process group
