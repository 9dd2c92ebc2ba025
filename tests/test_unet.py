"""The fastMRI U-Net: parameter count (closed form), odd sizes (pad/crop), scale invariance, gradients."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mrlearn.models.unet import Unet


def expected_params(in_chans: int, out_chans: int, chans: int, pools: int) -> int:
    """Closed form: conv blocks (2 bias-free 3x3 convs), transpose convs (2x2, no bias), final 1x1 conv (bias)."""
    block = lambda i, o: 9 * i * o + 9 * o * o  # noqa: E731
    total, ch = block(in_chans, chans), chans
    for _ in range(pools - 1):
        total += block(ch, 2 * ch)
        ch *= 2
    total += block(ch, 2 * ch)  # bottleneck
    for _ in range(pools):
        total += 4 * (2 * ch) * ch  # transpose conv 2ch -> ch
        total += block(2 * ch, ch)  # after concatenation
        ch //= 2
    return total + chans * out_chans + out_chans


@pytest.mark.parametrize("chans, pools", [(32, 4), (8, 2), (4, 1)])
def test_parameter_count_matches_the_architecture(chans, pools):
    model = Unet(1, 1, chans, pools)
    assert sum(p.numel() for p in model.parameters()) == expected_params(1, 1, chans, pools)


def test_fastmri_baseline_size():
    # fastMRI's Unet(in_chans=1, out_chans=1, chans=32, num_pool_layers=4) has 7,756,097 parameters.
    assert sum(p.numel() for p in Unet(1, 1, 32, 4).parameters()) == 7_756_097


@pytest.mark.parametrize("h, w", [(23, 37), (230 // 10, 180 // 10), (16, 16), (9, 5)])
def test_odd_sizes_equal_the_explicitly_padded_network(h, w):
    torch.manual_seed(0)
    model = Unet(2, 3, chans=4, num_pool_layers=3).eval()
    x = torch.randn(2, 2, h, w)
    y = model(x)
    assert y.shape == (2, 3, h, w)
    ph, pw = (-h) % 8, (-w) % 8
    padded = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    ref = model(padded)[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
    assert torch.allclose(y, ref, atol=1e-6)


def test_instance_norm_makes_the_output_invariant_to_input_scale():
    torch.manual_seed(1)
    model = Unet(1, 1, chans=4, num_pool_layers=2).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model(50.0 * x), atol=1e-3)  # bias-free convs + instance norm
        assert not torch.allclose(model(x), model(-x), atol=1e-2)  # but not sign invariant (LeakyReLU)


def test_every_parameter_gets_a_gradient_and_bad_input_is_rejected():
    torch.manual_seed(2)
    model = Unet(1, 1, chans=4, num_pool_layers=2)
    model(torch.randn(2, 1, 20, 12)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match=r"expects \[B, 1, H, W\]"):
        model(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError):
        Unet(chans=0)


def test_default_pooling_is_fastmri_average_and_max_is_an_option():
    torch.manual_seed(3)
    avg, mx = Unet(1, 1, chans=4, num_pool_layers=2).eval(), Unet(1, 1, chans=4, num_pool_layers=2, pool="max").eval()
    mx.load_state_dict(avg.state_dict())  # same weights: only the pooling differs
    assert avg.pool is F.avg_pool2d and mx.pool is F.max_pool2d
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(avg(x), mx(x), atol=1e-3)
    with pytest.raises(ValueError, match="avg"):
        Unet(pool="min")
