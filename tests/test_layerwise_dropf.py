"""The seed figure's greedy "drop f_i" scheme (model.scheme: drop_f): the forward pass against a hand-written
reference, earlier heads really dropped, g_i frozen after its stage, and training that beats the zero-filled input."""

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from helpers_data import write_tiny_splits  # noqa: E402

from mrlearn.config import config_from_dict  # noqa: E402
from mrlearn.errors import MrlearnError  # noqa: E402
from mrlearn.layerwise.blocks import FeatureStackNet  # noqa: E402
from mrlearn.training.data import ReconDataModule  # noqa: E402
from mrlearn.training.runner import build_method  # noqa: E402

torch.set_num_threads(1)
MASK = {"name": "random", "accelerations": [4], "center_fractions": [0.2]}


def _cfg(tmp_path, method, epochs, **model):
    return config_from_dict({
        "name": "lw_dropf", "seed": 0, "out_dir": str(tmp_path / "run"),
        "data": {"root": str(tmp_path / "data"), "batch_size": 2},
        "mask": MASK,
        "model": {"name": "layerwise", "num_blocks": 2, "hidden": 8, "kernel_size": 3, "scheme": "drop_f", **model},
        "method": {"loss": {"name": "l2"}, **method},
        "optim": {"name": "adam", "lr": 3e-3},
        "trainer": {"max_epochs": epochs, "accelerator": "cpu", "progress_bar": False, "log_every_n_steps": 1,
                    "deterministic": True},
    })


def test_drop_f_forward_is_the_feature_stack_with_only_the_last_head():
    torch.manual_seed(0)
    net = FeatureStackNet(num_blocks=3, hidden=5, kernel_size=3)
    for block in net.blocks:
        torch.nn.init.normal_(block.f.weight, std=0.3)
    x = torch.randn(2, 2, 9, 9)
    assert [b.g.in_channels for b in net.blocks] == [2, 5, 5]  # later g_i read the hidden features
    h = x
    for n, block in enumerate(net.blocks, 1):
        h = torch.relu(F.conv2d(h, block.g.weight, padding=1))
        expected = x + F.conv2d(h, block.f.weight)
        assert torch.allclose(net(x, n), expected, atol=1e-5)
    with torch.no_grad():  # the heads f_1, f_2 of earlier blocks are dropped: changing them changes nothing
        before = net(x, 3)
        net.blocks[0].f.weight.mul_(-7.0)
        net.blocks[1].f.weight.zero_()
        assert torch.equal(net(x, 3), before)
        assert torch.equal(net(x, 0), x)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_tiny_splits(tmp_path_factory.mktemp("lw_dropf"))


class _Snapshots(L.Callback):
    """Block weights at the first step of every epoch (after the module's stage set-up) and at the end."""

    def __init__(self):
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:
            self.at[trainer.current_epoch] = {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_greedy_drop_f_trains_block_by_block_and_beats_the_input(data_root, tmp_path):
    from mrlearn.layerwise.train import train

    cfg = _cfg(tmp_path, {"name": "layerwise_greedy", "epochs_per_block": 6}, epochs=12)
    cfg.data.root = str(data_root / "data")
    cfg.optim["lr"] = 1e-2
    snaps = _Snapshots()
    res = train(cfg, callbacks=[snaps])
    module, hist = res.module, res.history
    assert isinstance(module.model, FeatureStackNet)
    assert [h["blocks"] for h in hist] == [1] * 6 + [2] * 6
    # stage 2 starts from x + 0 (a new head f_2 = 0 on the stacked features) and must learn: measured 1.935e-3 -> 1.877e-3
    assert hist[-1]["val_loss"] < 0.99 * hist[6]["val_loss"]
    final = {k: v.detach() for k, v in module.model.state_dict().items()}
    g0, f0, g1 = "blocks.0.g.weight", "blocks.0.f.weight", "blocks.1.g.weight"
    # stage 1 trained g_1 (and its head); stage 2 left g_1 and the dropped f_1 exactly as stage 1 selected them
    assert not torch.equal(snaps.at[0][g0], snaps.at[6][g0])
    assert torch.equal(snaps.at[6][g0], final[g0]) and torch.equal(snaps.at[6][f0], final[f0])
    assert not torch.equal(snaps.at[6][g1], final[g1])
    # the zero-filled input is the 0-block network: the trained stack must beat it (measured: 0.967 of its loss)
    dm = ReconDataModule(cfg, transform_factory=module.build_transform)
    zf_loss, net_loss, n = 0.0, 0.0, 0
    module.eval()
    with torch.no_grad():
        for batch in dm.eval_loader("val"):
            zf_loss += float(module.loss_fn(batch["image"], batch["target_complex"])) * len(batch["fname"])
            net_loss += float(module.loss_fn(module(batch["image"]), batch["target_complex"])) * len(batch["fname"])
            n += len(batch["fname"])
    assert int(module.trained_blocks) == 2 and net_loss < 0.99 * zf_loss, (net_loss / n, zf_loss / n)
    assert res.convergence["steps"] == 24 and res.convergence["stopped_by"] == "block_budget"


def test_convex_blocks_refuse_drop_f(tmp_path):
    with pytest.raises(MrlearnError, match="model.scheme: drop_f stacks hidden features"):
        build_method(_cfg(tmp_path, {"name": "layerwise_convex"}, epochs=2))
