"""Layer-wise training: greedy stages, frozen features, the three Lightning methods on tiny volumes."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers_data import write_tiny_splits  # noqa: E402

from mrlearn.config import config_from_dict  # noqa: E402
from mrlearn.errors import MrlearnError  # noqa: E402
from mrlearn.layerwise.blocks import GatedBlock, TwoLayerBlock  # noqa: E402
from mrlearn.layerwise.data import SenseTransform  # noqa: E402
from mrlearn.training.runner import build_method  # noqa: E402

MASK = {"name": "random", "accelerations": [4], "center_fractions": [0.2]}


def _cfg(tmp_path, method, epochs=2, **model):
    return config_from_dict({
        "name": "lw", "seed": 0, "out_dir": str(tmp_path / "run"),
        "data": {"root": str(tmp_path / "data"), "batch_size": 2},
        "mask": MASK,
        "model": {"name": "layerwise", "num_blocks": 2, "hidden": 8, "kernel_size": 3, **model},
        "method": {"loss": {"name": "l2"}, **method},
        "optim": {"name": "adam", "lr": 3e-3},
        "trainer": {"max_epochs": epochs, "accelerator": "cpu", "progress_bar": False, "log_every_n_steps": 1},
    })


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_tiny_splits(tmp_path_factory.mktemp("lw"))


def _batch(root, n=4):
    from mrlearn import registry
    from mrlearn.data.dataset import SliceDataset

    t = SenseTransform(registry.build("mask", MASK, "mask"), train=True)
    ds = SliceDataset(root / "data" / "train")
    samples = [t(ds[i], i, 0) for i in range(min(n, len(ds)))]
    return {k: (torch.stack([s[k] for s in samples]) if torch.is_tensor(samples[0][k]) else [s[k] for s in samples])
            for k in samples[0]}


def test_frozen_features_have_no_grad_and_only_the_current_block_learns(data_root):
    module = build_method(_cfg(data_root, {"name": "layerwise_greedy", "epochs_per_block": 1}, epochs=2))
    batch = _batch(data_root, 2)
    with torch.no_grad():  # make block 0 non-trivial
        module.model.blocks[0].f.weight.normal_(0, 0.1)
    module.model.freeze(1)
    module.trained_blocks.fill_(2)
    x = module.model.frozen_features(batch["image"], 1)
    assert not x.requires_grad and x.grad_fn is None
    module.model.blocks[1].f.weight.data.normal_(0, 0.1)
    loss = module.loss_fn(module.model.blocks[1](x), batch["target_complex"])
    loss.backward()
    assert all(p.grad is None for p in module.model.blocks[0].parameters())
    assert all(p.grad is not None for p in module.model.blocks[1].parameters())


def test_greedy_two_blocks_reduce_the_loss_after_each_block(data_root):
    torch.manual_seed(0)
    module = build_method(_cfg(data_root, {"name": "layerwise_greedy", "epochs_per_block": 1}, epochs=2))
    batch = _batch(data_root, 4)
    net, target = module.model, batch["target_complex"]
    losses = [float(module.loss_fn(batch["image"], target))]  # 0 blocks: the zero-filled input
    for stage in range(2):
        net.freeze(stage)
        opt = torch.optim.Adam([p for p in net.blocks[stage].parameters()], lr=3e-3)
        x = net.frozen_features(batch["image"], stage)
        for _ in range(60):
            opt.zero_grad()
            module.loss_fn(net.blocks[stage](x), target).backward()
            opt.step()
        with torch.no_grad():
            losses.append(float(module.loss_fn(net(batch["image"], stage + 1), target)))
    assert losses[1] < 0.9 * losses[0] and losses[2] < losses[1]


def _run(cfg):
    from mrlearn.layerwise.train import train

    return train(cfg)


def test_lightning_greedy_stages(data_root, tmp_path):
    cfg = _cfg(tmp_path, {"name": "layerwise_greedy", "epochs_per_block": 2}, epochs=4)
    cfg.data.root = str(data_root / "data")
    res = _run(cfg)
    hist = res.history
    assert [h["blocks"] for h in hist] == [1, 1, 2, 2]
    assert all("val_psnr" in h for h in hist)
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]
    m = json.loads((res.run_dir / "metrics.json").read_text())
    assert m["final"]["val_ssim"] > 0
    # the checkpoint restores the trained depth
    ck = torch.load(res.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(ck["state_dict"]["trained_blocks"]) == 2


def test_greedy_blocks_stop_on_their_own_plateau_and_restart_the_learning_rate(data_root, tmp_path):
    # a gain of 100 dB is never reached: each block plateaus after its second validation (patience 1), long
    # before its 6-epoch cap; the run ends when the last block has plateaued
    method = {"name": "layerwise_greedy", "epochs_per_block": 6, "block_patience": 1, "block_min_delta": 100.0,
              "block_monitor": "val_psnr", "lr_step_epochs": 1, "lr_gamma": 0.5}
    cfg = _cfg(tmp_path, method, epochs=12)
    cfg.data.root = str(data_root / "data")
    res = _run(cfg)
    assert [h["blocks"] for h in res.history] == [1, 1, 2, 2]
    assert [h["lr"] for h in res.history] == pytest.approx([3e-3, 1.5e-3, 3e-3, 1.5e-3])  # restarts per block
    m = json.loads((res.run_dir / "metrics.json").read_text())
    assert m["stopped_by"] == "block_plateau" and m["converged"] is True
    assert m["blocks_still_improving"] == [] and m["block_epochs"] == [2, 2] and m["monitor"] == "val_psnr"
    # the stage bookkeeping travels in the checkpoint (a resumed run continues the same block)
    ck = torch.load(res.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    fresh = build_method(cfg)
    fresh.on_load_checkpoint(ck)
    assert fresh.stage() == 1 and fresh.block_end == {0: "plateau", 1: "plateau"}
    assert fresh.best_epoch_in_block == res.module.best_epoch_in_block


def test_greedy_block_stopped_by_its_cap_is_still_improving(data_root, tmp_path):
    method = {"name": "layerwise_greedy", "epochs_per_block": 4, "block_patience": 2}
    module = build_method(_cfg(tmp_path, method, epochs=8))
    module.best_epoch_in_block = {0: 1, 1: 3}
    module.block_end = {0: "plateau", 1: "cap"}
    record = module.block_convergence()
    assert record["stopped_by"] == "block_cap" and not record["converged"] and record["blocks_still_improving"] == [1]
    module.block_end = {0: "plateau", 1: "plateau"}
    assert module.block_convergence()["converged"]
    fixed = build_method(_cfg(tmp_path, {"name": "layerwise_greedy", "epochs_per_block": 4}, epochs=8))
    fixed.best_epoch_in_block = {0: 1, 1: 3}  # fixed budget: best at the block's last epoch = still improving
    assert fixed.block_convergence()["blocks_still_improving"] == [1]


def test_lightning_end_to_end(data_root, tmp_path):
    cfg = _cfg(tmp_path, {"name": "layerwise_end_to_end"}, epochs=2)
    cfg.data.root = str(data_root / "data")
    res = _run(cfg)
    assert [h["blocks"] for h in res.history] == [2, 2]
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


@pytest.mark.parametrize("variant", ["gated", "relu"])
def test_lightning_convex(data_root, tmp_path, variant):
    cfg = _cfg(tmp_path, {"name": "layerwise_convex", "variant": variant, "num_patterns": 8, "beta": 1e-4,
                          "patches_per_slice": 64, "max_iter": 60}, epochs=3)
    cfg.data.root = str(data_root / "data")
    res = _run(cfg)
    module = res.module
    log = module.convex_log
    assert [e["block"] for e in log] == [1, 2]  # stops after the last block
    assert len(res.history) == 2
    assert all(e["convex_objective"] < e["start_objective"] for e in log)
    kind = GatedBlock if variant == "gated" else TwoLayerBlock
    assert all(isinstance(b, kind) for b in module.model.blocks)
    if variant == "relu":
        assert all(abs(e["gap"]) <= 0.05 * e["convex_objective"] for e in log)
    # the train loss logged in epoch e is that of the e-block network (0: the zero-filled input)
    assert res.history[1]["train_loss"] < 0.95 * res.history[0]["train_loss"]
    assert res.history[1]["val_loss"] <= res.history[0]["val_loss"] * 1.02
    # the checkpoint (changed block shapes) loads into a freshly built module
    fresh = build_method(cfg)
    ck = torch.load(res.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    fresh.load_state_dict(ck["state_dict"])
    batch = _batch(data_root, 2)
    with torch.no_grad():
        assert torch.allclose(fresh(batch["image"]), module.cpu()(batch["image"]), atol=1e-6)


def test_bad_method_options(data_root, tmp_path):
    with pytest.raises(MrlearnError, match="max_epochs"):
        build_method(_cfg(tmp_path, {"name": "layerwise_greedy", "epochs_per_block": 3}, epochs=2))
    with pytest.raises(MrlearnError, match="max_epochs"):
        build_method(_cfg(tmp_path, {"name": "layerwise_convex"}, epochs=1))
    with pytest.raises(MrlearnError, match="epochs_per_block"):
        build_method(_cfg(tmp_path, {"name": "layerwise_greedy", "epochs_per_block": 0}))
    with pytest.raises(MrlearnError, match="block_patience"):
        build_method(_cfg(tmp_path, {"name": "layerwise_greedy", "epochs_per_block": 1, "block_patience": 1}))
    with pytest.raises(MrlearnError, match="block_monitor"):
        build_method(_cfg(tmp_path, {"name": "layerwise_greedy", "block_monitor": "psnr"}, epochs=20))
    with pytest.raises(MrlearnError, match="variant"):
        build_method(_cfg(tmp_path, {"name": "layerwise_convex", "variant": "cone"}))
    with pytest.raises(MrlearnError, match="beta"):
        build_method(_cfg(tmp_path, {"name": "layerwise_convex", "beta": -1.0}))
    cfg = _cfg(tmp_path, {"name": "layerwise_end_to_end"})
    cfg.scheduler = {"name": "step"}
    with pytest.raises(MrlearnError, match="scheduler"):
        build_method(cfg)
    cfg = _cfg(tmp_path, {"name": "layerwise_end_to_end"})
    cfg.model = {"name": "unet"}
    with pytest.raises(MrlearnError, match="model"):
        build_method(cfg)


def test_layerwise_step_saves_one_block_of_activations_for_backward():
    """The memory argument, deterministically: bytes autograd keeps for backward in one step."""
    from mrlearn.layerwise.blocks import LayerwiseNet

    def saved_bytes(fn):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn().backward()
        return total[0]

    torch.manual_seed(0)
    net, x = LayerwiseNet(5, 16, 7), torch.randn(2, 2, 24, 24)
    e2e = saved_bytes(lambda: net(x).square().mean())
    net.freeze(4)
    lw = saved_bytes(lambda: net.blocks[4](net.frozen_features(x, 4)).square().mean())
    assert lw > 0 and lw * 4 < e2e  # about 1/5: only the trained block's activations are kept


GREEDY_SET = ["model.num_blocks=2", "model.hidden=4", "model.kernel_size=3", "method.epochs_per_block=4",
              "method.block_patience=1", "method.block_min_delta=100", "method.lr_step_epochs=1", "trainer.max_epochs=8",
              "trainer.val_every=1", "trainer.checkpoint_every_n_steps=2", "trainer.progress_bar=false",
              "trainer.accelerator=cpu", "data.batch_size=2", "data.contrasts=null", "data.recon_size=null",
              "mask={name: random, accelerations: [4], center_fractions: [0.25]}"]

GREEDY_KILL = """
import os, signal, sys
import lightning as L
from mrlearn.config import load_config
from mrlearn.training.runner import train

class KillAt(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)

sets = [f"data.root={sys.argv[1]}", f"out_dir={sys.argv[2]}", *sys.argv[4:]]
train(load_config("layerwise_greedy", sets), callbacks=[KillAt()])
"""


def test_greedy_killed_in_its_second_block_resumes_to_the_same_network(data_root, tmp_path):
    # each block plateaus after 2 epochs; the kill falls in block 2 (epoch 2) after a mid-epoch step checkpoint:
    # the resumed run must keep block 1 frozen, continue block 2 with its best-so-far weights and step schedule
    import subprocess

    from mrlearn.config import load_config
    from mrlearn.training.runner import train

    root = str(data_root / "data")
    ref = train(load_config("layerwise_greedy", [f"data.root={root}", f"out_dir={tmp_path / 'ref'}", *GREEDY_SET]))
    steps_per_epoch = ref.history[0]["step"]
    kill_at = 2 * steps_per_epoch + 3
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", GREEDY_KILL, root, str(out), str(kill_at), *GREEDY_SET],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == -9, proc.stderr[-2000:]
    resumed = train(load_config("layerwise_greedy", [f"data.root={root}", f"out_dir={out}", *GREEDY_SET]), resume=True)
    a = torch.load(ref.last_checkpoint, weights_only=True)
    b = torch.load(resumed.last_checkpoint, weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["mrlearn"]["greedy"]["block_end"] == b["mrlearn"]["greedy"]["block_end"] == {"0": "plateau", "1": "plateau"}
    assert [h["blocks"] for h in resumed.history] == [h["blocks"] for h in ref.history] == [1, 1, 2, 2]
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in ref.history]
