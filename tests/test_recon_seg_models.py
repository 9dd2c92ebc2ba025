"""Joint reconstruction-segmentation networks: output protocol, gradient flow, scale behaviour, options."""

from __future__ import annotations

import pytest
import torch

from mrlearn import registry
from mrlearn.errors import MrlearnError
from mrlearn.recon_seg.cross_stitch import StitchUnit
from mrlearn.recon_seg.parts import ReconSegOutput

SMALL = {
    "recon_then_seg": {"name": "recon_then_seg", "seg_chans": 4, "seg_pools": 2,
                       "recon": {"name": "unrolled", "cascades": 1, "chans": 4, "num_blocks": 1, "dc": "gradient", "maps": "acs"}},
    "ynet": {"name": "ynet", "chans": 4, "num_pools": 2},
    "unrolled_seg": {"name": "unrolled_seg", "cascades": 2, "chans": 4, "seg_chans": 4, "seg_pools": 2},
    "unrolled_seg_sum": {"name": "unrolled_seg", "cascades": 2, "chans": 4, "seg_chans": 4, "seg_pools": 2, "combine": "sum"},
    "cross_stitch": {"name": "cross_stitch", "chans": 4, "num_pools": 2},
    "sluice": {"name": "sluice", "chans": 4, "num_pools": 2},
}


def kspace_batch(b: int = 2, coils: int = 3, h: int = 24, w: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(b, coils, h, w, dtype=torch.complex64, generator=g)
    mask = torch.zeros(b, 1, 1, w)
    mask[..., ::2] = 1
    mask[..., w // 2 - 2: w // 2 + 2] = 1
    return k * mask, mask


@pytest.mark.parametrize("key", list(SMALL))
def test_forward_shapes_and_every_parameter_gets_a_gradient(key):
    torch.manual_seed(0)
    net = registry.build("model", dict(SMALL[key]), "model")
    k, mask = kspace_batch()
    out = net(k, mask, None)
    assert isinstance(out, ReconSegOutput) and net.input_kind == "kspace"
    assert out.image.shape == (2, 24, 20) and out.image.is_complex()
    assert out.seg_logits.shape == (2, 8, 24, 20) and not out.seg_logits.is_complex()
    (out.image.abs().mean() + out.seg_logits.square().mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    shared = {id(p) for p in net.shared_parameters()}
    assert 0 < len(shared) < len(list(net.parameters()))


@pytest.mark.parametrize("key", ["ynet", "unrolled_seg", "sluice"])
def test_image_scales_with_the_kspace_and_the_labels_do_not(key):
    torch.manual_seed(0)
    net = registry.build("model", dict(SMALL[key]), "model").eval()
    k, mask = kspace_batch(b=1)
    with torch.no_grad():
        a, b = net(k, mask, None), net(k * 1000.0, mask, None)
    assert torch.allclose(b.image, a.image * 1000.0, rtol=1e-4, atol=1e-3 * float(b.image.abs().max()))
    assert torch.allclose(a.seg_logits, b.seg_logits, atol=1e-3)


def test_both_losses_reach_the_shared_encoder_of_the_ynet():
    torch.manual_seed(0)
    net = registry.build("model", dict(SMALL["ynet"]), "model")
    k, mask = kspace_batch()
    for which in ("image", "seg_logits"):
        net.zero_grad()
        out = net(k, mask, None)
        (out.image.abs().mean() if which == "image" else out.seg_logits.mean()).backward()
        enc = [p.grad for p in net.encoder.parameters()]
        other = net.seg_decoder if which == "image" else net.recon_decoder
        assert all(g is not None and g.abs().sum() > 0 for g in enc)
        assert all(p.grad is None for p in other.parameters())  # task-specific decoder untouched by the other task


def test_detach_keeps_the_segmentation_gradient_out_of_the_reconstruction():
    net = registry.build("model", {**SMALL["recon_then_seg"], "detach": True}, "model")
    k, mask = kspace_batch()
    net(k, mask, None).seg_logits.mean().backward()
    assert all(p.grad is None for p in net.recon.parameters())
    assert all(p.grad is not None for p in net.segmenter.parameters())


def test_stitch_units_mix_as_initialised():
    a, b = torch.full((1, 4, 2, 2), 1.0), torch.full((1, 4, 2, 2), 3.0)
    x, y = StitchUnit(1)(a, b)
    assert torch.allclose(x, torch.full_like(a, 0.9 * 1 + 0.1 * 3)) and torch.allclose(y, torch.full_like(a, 0.1 + 0.9 * 3))
    unit = StitchUnit(2)  # 4 groups (2 per column): 0.9 on itself, 0.1 / 3 to each other group
    b2 = torch.cat([torch.full((1, 2, 2, 2), 3.0), torch.full((1, 2, 2, 2), 5.0)], 1)
    x, y = unit(a, b2)
    assert torch.allclose(x[:, :2], torch.full((1, 2, 2, 2), 0.9 + 0.1 / 3 * (1 + 3 + 5)))
    assert torch.allclose(y[:, 2:], torch.full((1, 2, 2, 2), 0.9 * 5 + 0.1 / 3 * (1 + 1 + 3)))


def test_a_few_steps_on_one_batch_lower_both_losses():
    from mrlearn.seg.losses import SegLoss

    torch.manual_seed(0)
    net = registry.build("model", {**SMALL["ynet"], "multicoil": False, "num_classes": 2}, "model")
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[0, 3:9, 4:12], labels[1, 6:14, 2:8] = 1, 1  # a bright rectangle on a dim background
    target = 1.0 + 2.0 * labels.float()
    mask = torch.zeros(2, 1, 1, 16)
    mask[..., ::2], mask[..., 6:10] = 1, 1
    k = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(target.to(torch.complex64)), norm="ortho")).unsqueeze(1) * mask
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    seg_loss, history = SegLoss("ce_dice"), []
    for _ in range(40):
        out = net(k, mask, None)
        losses = (torch.nn.functional.l1_loss(out.image.abs(), target), seg_loss(out.seg_logits, labels))
        opt.zero_grad()
        (losses[0] + losses[1]).backward()
        opt.step()
        history.append([float(v.detach()) for v in losses])
    assert history[-1][0] < history[0][0] and history[-1][1] < 0.5 * history[0][1]


@pytest.mark.parametrize("section, match", [
    ({"name": "ynet", "num_classes": 1}, "model.num_classes: must be at least 2"),
    ({"name": "unrolled_seg", "combine": "max"}, "model.combine: expected one of 'concat', 'sum'"),
    ({"name": "sluice", "chans": 6, "subspaces": 4}, "model.subspaces: 4 does not divide chans 6"),
    ({"name": "recon_then_seg", "recon": {"name": "ynet"}}, "model.recon.name: 'ynet' is a joint model"),
    ({"name": "recon_then_seg", "recon": {"name": "unet"}}, "model.recon.name: 'unet' is an image network"),
])
def test_bad_options_are_one_line(section, match):
    with pytest.raises(MrlearnError, match=match):
        registry.build("model", section, "model")
