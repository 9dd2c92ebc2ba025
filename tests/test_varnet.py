"""fastMRI's E2E-VarNet (model ``varnet``): shapes, fastMRI's parameter names, the cascade's closed form with a zero
regulariser, unit-RSS maps, the ACS search on hand-made masks, ``model.init`` (state dicts, checkpoints, one-line
errors), and a tiny ``mrlearn train`` run whose checkpoint ``load_model`` reconstructs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mrlearn import registry
from mrlearn.errors import MrlearnError
from mrlearn.models.protocol import input_kind
from mrlearn.models.unet import Unet
from mrlearn.models.varnet import VarNet, acs_columns, acs_width, divide_by_rss
from mrlearn.models.weights import load_init_weights
from mrlearn.physics.fft import fft2c, ifft2c

TINY = dict(num_cascades=2, sens_chans=4, sens_pools=2, chans=4, pools=2)
C, H, W = 4, 32, 32


def _kspace(b=2, c=C, h=H, w=W, seed=0):
    """Masked k-space of a smooth random image under smooth coil profiles, and its column mask [B, 1, 1, W]."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    image = torch.exp(-(x**2 + y**2) * 2) * (1 + 0.3 * torch.randn(b, 1, h, w, generator=g))
    coils = torch.stack([torch.exp(1j * math.pi * k / c * (1 + x)) * (1.5 + torch.cos(x + k) * torch.sin(y - k))
                         for k in range(c)])
    full = fft2c(image.to(torch.complex64) * coils.to(torch.complex64))
    mask = (torch.rand(b, 1, 1, w, generator=g) < 0.3).float()
    mask[..., w // 2 - 3 : w // 2 + 3] = 1
    return full * mask + 0.0, mask


class Zero(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def _rss(k):
    return ifft2c(k).abs().square().sum(1).sqrt()


def fastmri_unet_keys(prefix, pools):
    """fastMRI's ``Unet`` state-dict keys, written from its layout (ConvBlock convs at layers.0 / layers.4)."""
    conv = lambda p: [f"{p}layers.0.weight", f"{p}layers.4.weight"]  # noqa: E731
    keys = [k for i in range(pools) for k in conv(f"{prefix}down_sample_layers.{i}.")] + conv(f"{prefix}conv.")
    for i in range(pools):
        keys.append(f"{prefix}up_transpose_conv.{i}.layers.0.weight")
        keys += conv(f"{prefix}up_conv.{i}.") if i < pools - 1 else conv(f"{prefix}up_conv.{i}.0.") + [
            f"{prefix}up_conv.{i}.1.weight", f"{prefix}up_conv.{i}.1.bias"]
    return keys


# ------------------------------------------------------------------------------------------------ structure


def test_state_dict_keys_are_fastmris():
    model = VarNet(**TINY)
    expected = set(fastmri_unet_keys("sens_net.norm_unet.unet.", 2))
    for t in range(2):
        expected |= set(fastmri_unet_keys(f"cascades.{t}.model.unet.", 2)) | {f"cascades.{t}.dc_weight"}
    sd = model.state_dict()
    assert set(sd) == expected
    assert tuple(sd["sens_net.norm_unet.unet.down_sample_layers.0.layers.0.weight"].shape) == (4, 2, 3, 3)
    assert tuple(sd["cascades.1.model.unet.up_conv.1.1.weight"].shape) == (2, 4, 1, 1)
    assert all(float(sd[f"cascades.{t}.dc_weight"]) == 1.0 for t in range(2))
    assert set(Unet(1, 1, 8, 3).state_dict()) == set(fastmri_unet_keys("", 3))
    # fastMRI's defaults (12 cascades, 18/4, sens 8/4): the ~30M-parameter network of the paper
    assert sum(p.numel() for p in VarNet().parameters()) == 29_936_966


@pytest.mark.parametrize("h, w, two_d", [(32, 32, False), (30, 26, False), (32, 32, True)])
def test_shapes_and_inputs(h, w, two_d):
    torch.manual_seed(0)
    model = VarNet(**TINY)
    k, mask = _kspace(2, C, h, w)
    if two_d:
        mask = mask.expand(2, 1, h, w).clone()
    out = model(k, mask)
    assert out.shape == (2, h, w) and out.dtype == torch.float32 and torch.isfinite(out).all() and (out >= 0).all()
    out.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(k, mask, torch.ones_like(k)), model(k, mask))  # given maps are not used
        assert model(k, None).shape == (2, h, w)  # no mask: all sampled
    assert input_kind(model) == "kspace"


def test_bad_input_and_options_are_one_line_errors():
    model = VarNet(**TINY)
    k, mask = _kspace()
    with pytest.raises(MrlearnError, match="complex"):
        model(k.real, mask)
    with pytest.raises(MrlearnError, match="does not broadcast"):
        model(k, mask[..., :-1])
    with pytest.raises(MrlearnError, match="model.chans: must be at least 1"):
        registry.build("model", {"name": "varnet", "chans": 0}, "model")
    with pytest.raises(MrlearnError, match="model.cascades: unknown option for model 'varnet'"):
        registry.build("model", {"name": "varnet", "cascades": 2}, "model")
    assert isinstance(registry.build("model", {"name": "varnet", **TINY}, "model"), VarNet)


# ---------------------------------------------------------------------------------------------------- maths


@pytest.mark.parametrize("dc_weight", [1.0, 0.3])
def test_cascade_with_a_zero_regulariser_is_the_soft_data_consistency_step(dc_weight):
    torch.manual_seed(1)
    model = VarNet(**TINY)
    k0, mask = _kspace(seed=1)
    current = k0 + _kspace(seed=2)[0] + 0.1  # anything: sampled and unsampled entries differ from k0
    maps = model.sens_maps(k0, mask)
    cascade = model.cascades[0]
    cascade.model = Zero()
    with torch.no_grad():
        cascade.dc_weight.fill_(dc_weight)
        out = cascade(current, k0, mask != 0, maps)
    expected = current - dc_weight * mask * (current - k0)  # k - eta M (k - k0)
    assert torch.allclose(out, expected, atol=1e-6, rtol=0)
    # the whole network with zero regularisers and eta = 1 returns the zero-filled RSS image
    for c in model.cascades:
        c.model = Zero()
    with torch.no_grad():
        assert torch.allclose(model(k0, mask), _rss(k0), atol=1e-5)


def test_cascade_regulariser_term_is_expand_of_reduce():
    """With R = identity the model term is E(Rd(k)) = F(S sum_c conj(S_c) F^-1 k_c): for k = E(x), E(x) again."""
    torch.manual_seed(2)
    model = VarNet(**TINY)
    k0, mask = _kspace(seed=3)
    with torch.no_grad():
        maps = model.sens_maps(k0, mask)
    cascade = model.cascades[0]
    cascade.model = nn.Identity()
    x = ifft2c(k0).sum(1, keepdim=True)
    k = fft2c(x * maps)  # E(x); Rd(E(x)) = x since sum_c |S_c|^2 = 1
    with torch.no_grad():
        cascade.dc_weight.zero_()
        out = cascade(k, k0, mask != 0, maps)
    assert torch.allclose(out, torch.zeros_like(out), atol=1e-5 * float(k.abs().max()))


def test_sensitivity_maps_have_unit_rss_and_see_only_the_acs_columns():
    torch.manual_seed(3)
    model = VarNet(**TINY)
    k, mask = _kspace(seed=4)
    with torch.no_grad():
        maps = model.sens_maps(k, mask)
        r = maps.abs().square().sum(1).sqrt()
        assert maps.shape == k.shape and torch.allclose(r, torch.ones_like(r), atol=1e-5)
        outside = ~acs_columns(acs_width(mask, 2), W)
        changed = torch.where(outside, 5 * k + 1, k)  # k-space outside the ACS columns does not reach the maps
        assert torch.equal(model.sens_maps(changed, mask), maps)
        model.sens_net.mask_center = False
        assert not torch.allclose(model.sens_maps(changed, mask), maps)
    zero = divide_by_rss(torch.zeros(1, 3, 4, 4, dtype=torch.complex64))
    assert torch.equal(zero, torch.zeros_like(zero))  # no NaN where every coil is 0


def _reference_width(row):
    """fastMRI's ACS search on a 0/1 row, written out: runs of sampled columns left of / from the centre."""
    c = len(row) // 2
    left = next((i for i, v in enumerate(row[:c][::-1]) if v == 0), c)
    right = next((i for i, v in enumerate(row[c:]) if v == 0), len(row) - c)
    return max(2 * min(left, right), 1)


@pytest.mark.parametrize("w, sampled, width, start", [
    (32, [3, *range(12, 20), 25], 8, 12),  # symmetric block 12..19
    (32, [*range(13, 22), 30], 6, 13),  # asymmetric 13..21: 3 left of the centre, 6 from it -> 6, from 13
    (29, [*range(11, 17), 20], 6, 12),  # odd width: centre 14, 3 left, 3 right
    (32, [16, 17, 18], 1, 16),  # nothing left of the centre: one line
])
def test_acs_search_matches_hand_made_masks(w, sampled, width, start):
    mask = torch.zeros(1, 1, 1, w)
    mask[..., sampled] = 1
    assert int(acs_width(mask, 1)) == width == _reference_width(mask.flatten().tolist())
    cols = acs_columns(acs_width(mask, 1), w).flatten()
    assert cols.nonzero().flatten().tolist() == list(range(start, start + width))
    two_d = mask.expand(1, 1, 9, w).clone()
    two_d[:, :, 0] = 0  # a 2-D mask is read on its centre row
    assert int(acs_width(two_d, 1)) == width


def test_acs_width_given_per_sample_and_random_masks_match_the_reference():
    rng = np.random.default_rng(0)
    rows = (rng.random((50, 36)) < 0.35).astype(np.float32)
    rows[:, 16:20] = 1
    mask = torch.from_numpy(rows).reshape(50, 1, 1, 36)
    assert acs_width(mask, 50).tolist() == [_reference_width(r.tolist()) for r in rows]
    two = mask[:2]
    assert acs_width(two, 2, 10).tolist() == [10, 10]
    found = acs_width(two, 2)
    assert acs_width(two, 2, torch.tensor([0, 12])).tolist() == [int(found[0]), 12]  # 0: found from the mask


def test_output_scales_with_the_kspace_and_checkpointing_is_identical():
    torch.manual_seed(4)
    model = VarNet(**TINY)
    k, mask = _kspace(seed=5)
    with torch.no_grad():
        assert torch.allclose(model(1e3 * k, mask), 1e3 * model(k, mask), rtol=1e-4, atol=1e-3)
    grads = []
    for flag in (False, True):
        model.checkpointing = flag
        model.zero_grad()
        out = model(k, mask)
        out.square().mean().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0][1], grads[1][1]))


def test_bf16_autocast_keeps_float32_outputs():
    torch.manual_seed(5)
    model = VarNet(**TINY)
    k, mask = _kspace(seed=6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(k, mask)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_ssdu_refuses_a_magnitude_network():
    from mrlearn.ssl.ssdu import run_model

    k, mask = _kspace()
    with pytest.raises(MrlearnError, match="SSDU needs a complex"):
        run_model(VarNet(**TINY), k, mask, None)


def test_shipped_config_is_fastmris_recipe_and_round_trips(tmp_path):
    import yaml

    from mrlearn.config import config_from_dict, dump_config, load_config
    from mrlearn.training.runner import build_method

    cfg = load_config("varnet_fastmri", [f"data.root={tmp_path}"])
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    assert {k: cfg.model[k] for k in ("num_cascades", "chans", "pools", "sens_chans", "sens_pools")} == dict(
        num_cascades=12, chans=18, pools=4, sens_chans=8, sens_pools=4)
    assert cfg.model["init"] is None and cfg.method == {"name": "supervised_kspace", "loss": {"name": "ssim"}}
    assert cfg.optim["name"] == "adam" and cfg.optim["lr"] == 3e-4 and cfg.trainer.max_epochs == 50
    assert cfg.scheduler == {"name": "step", "step_size": 40, "gamma": 0.1}
    module = build_method(cfg)
    assert isinstance(module.model, VarNet) and module.keep_kspace


# ------------------------------------------------------------------------------------------------ model.init


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(6)
    model = VarNet(**TINY)
    path = tmp_path / "varnet_state_dict.pt"
    torch.save(model.state_dict(), path)
    return model, path


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["bare", "lightning", "fastmri_module"])
def test_init_loads_state_dicts_and_checkpoints(saved, tmp_path, wrap):
    model, path = saved
    sd = model.state_dict()
    if wrap != "bare":
        prefix = "model." if wrap == "lightning" else "varnet."  # mrlearn's method / fastMRI's VarNetModule
        path = tmp_path / f"{wrap}.ckpt"
        torch.save({"state_dict": {**{prefix + k: v for k, v in sd.items()}, "loss.w": torch.ones(1, 1, 7, 7)},
                    "epoch": 3}, path)
    fresh = VarNet(**TINY)
    assert not _same_weights(fresh, model)
    load_init_weights(fresh, path, "varnet")
    assert _same_weights(fresh, model)


def test_init_through_the_config_and_build_method(saved, tmp_path):
    from mrlearn.config import load_config
    from mrlearn.training.runner import build_method

    model, path = saved
    sets = [f"model.{k}={v}" for k, v in TINY.items()]
    cfg = load_config("varnet_fastmri", [*sets, f"model.init={path}"])
    assert cfg.model["init"] == str(path)
    assert _same_weights(build_method(cfg).model, model)
    assert not _same_weights(build_method(cfg, init=False).model, model)
    for bad in ("model.init=5", "model.init=''"):
        with pytest.raises(MrlearnError, match="model.init: expected the path of a weights file or null"):
            load_config("varnet_fastmri", [bad])


def _one_line_error(model, path, name):
    with pytest.raises(MrlearnError) as info:
        load_init_weights(model, path, name)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and msg.startswith("model.init")
    return msg


def test_init_mismatches_are_one_line_errors_with_advice(saved, tmp_path):
    model, path = saved
    msg = _one_line_error(VarNet(**{**TINY, "chans": 8}), path, "varnet")
    assert "shape mismatch: cascades.0.model.unet.down_sample_layers.0.layers.0.weight" in msg
    assert "the file holds a VarNet with" in msg and "set model.chans=4" in msg
    msg = _one_line_error(VarNet(**{**TINY, "num_cascades": 3}), path, "varnet")
    assert "missing cascades.2." in msg and "set model.num_cascades=2" in msg
    unet_file = tmp_path / "unet.pt"
    torch.save(Unet(1, 1, 32, 4).state_dict(), unet_file)
    msg = _one_line_error(VarNet(**TINY), unet_file, "varnet")
    assert "unexpected down_sample_layers.0.layers.0.weight" in msg
    assert "the file holds a U-Net" in msg and "set model.name=unet" in msg and "model.chans=32" in msg
    msg = _one_line_error(Unet(1, 1, 16, 4), unet_file, "unet")
    assert msg.endswith("set model.chans=32")  # only the setting that differs
    missing = tmp_path / "nope.pt"
    assert "file not found" in _one_line_error(VarNet(**TINY), missing, "varnet")
    text = tmp_path / "notes.pt"
    text.write_text("not a torch file\n")
    assert "not a torch weights file" in _one_line_error(VarNet(**TINY), text, "varnet")
    listed = tmp_path / "list.pt"
    torch.save([torch.ones(1)], listed)
    assert "holds a list, not a state dict" in _one_line_error(VarNet(**TINY), listed, "varnet")


def test_unet_init_takes_fastmri_and_earlier_mrlearn_names(tmp_path):
    torch.manual_seed(7)
    src = Unet(1, 1, 4, 2)
    sd = src.state_dict()
    assert "down_sample_layers.0.layers.4.weight" in sd  # fastMRI's names
    legacy = {}
    for key, value in sd.items():  # mrlearn's names before this change
        k = key.replace("down_sample_layers.", "down.").replace("up_transpose_conv.", "up_transpose.")
        k = "bottleneck." + k[len("conv."):] if k.startswith("conv.") else k
        legacy[k.replace(".layers.4.", ".layers.3.")] = value
    path = tmp_path / "legacy.pt"
    torch.save(legacy, path)
    fresh = load_init_weights(Unet(1, 1, 4, 2), path, "unet")
    assert _same_weights(fresh, src)
    direct = Unet(1, 1, 4, 2)
    direct.load_state_dict(legacy)  # torch's own load_state_dict upgrades them too (pre-hook)
    assert _same_weights(direct, src)


# ------------------------------------------------------------------------------------------- training (tiny)


def test_tiny_training_run_and_load_model(tmp_path):
    from helpers_training import tiny_dataset
    from mrlearn import load_model
    from mrlearn.cli import main
    from mrlearn.data.fastmri import read_kspace

    data = tiny_dataset(tmp_path / "data")
    out = tmp_path / "run"
    sets = [*(f"model.{k}={v}" for k, v in TINY.items()), f"data.root={data}", "data.train=train", "data.val=val",
            "data.test=test", "data.recon_size=null", "data.num_workers=0", "data.batch_size=2",
            "trainer.max_epochs=1", "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.progress_bar=false",
            "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "trainer.logger=csv"]
    args = ["train", "--config", "varnet_fastmri", "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2
    losses = [v for h in metrics["history"] for k, v in h.items() if "loss" in k]
    assert losses and all(math.isfinite(v) for v in losses)
    # a std over one validation volume is undefined (NaN: evaluation.spread); every metric itself is finite
    assert all(math.isfinite(v) for k, v in metrics["final"].items() if not k.endswith("_std"))
    loaded = load_model(out / "checkpoints" / "last.ckpt")
    assert isinstance(loaded.module.model, VarNet)
    kspace = read_kspace(next((data / "test").glob("*.h5")))[:2]
    recon = loaded.reconstruct(kspace)
    assert recon.shape == (2, *kspace.shape[-2:]) and np.isfinite(recon).all() and recon.max() > 0
