"""SSDU k-space loss (closed form, scale invariance), NaN guards (empty Lambda, zero rows), SSDU step properties."""

from __future__ import annotations

import math

import pytest
import torch

import helpers_training  # noqa: F401  (one torch thread: the test machine is small and shared)
from helpers_data import make_kspace
from mrlearn.models.unrolled import UnrolledNet
from mrlearn.ssl.losses import energy_ratio, relative_l2, ssdu_loss
from mrlearn.ssl.split import SplitOptions
from mrlearn.ssl.ssdu import estimate_maps, forward_op, run_model, ssdu_step


def test_ssdu_loss_closed_form():
    # one sample, one coil, 1 x 3 k-space; Lambda = first two entries
    u = torch.tensor([[[[3 + 4j, 1j, 7.0]]]], dtype=torch.complex64)
    v = torch.tensor([[[[3 + 1j, 0, -2.0]]]], dtype=torch.complex64)
    lam = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    # u_L = (3+4i, i): ||u||_2 = sqrt(26), ||u||_1 = 6; u - v on L = (3i, i): ||.||_2 = sqrt(10), ||.||_1 = 4
    expected = math.sqrt(10) / math.sqrt(26) + 4 / 6
    res = ssdu_loss(v, u, lam)
    assert res.loss.item() == pytest.approx(expected, rel=1e-6)
    assert bool(res.valid.all())
    half = ssdu_loss(v, u, lam, l1_weight=0.0)
    assert half.loss.item() == pytest.approx(math.sqrt(10) / math.sqrt(26), rel=1e-6)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e12])
def test_ssdu_loss_is_scale_invariant(scale):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 8, 8, dtype=torch.complex64, generator=g)
    v = torch.randn(2, 3, 8, 8, dtype=torch.complex64, generator=g)
    lam = (torch.rand(2, 1, 8, 8, generator=g) < 0.4).float()
    ref = ssdu_loss(v, u, lam).loss.item()
    assert ssdu_loss(v * scale, u * scale, lam).loss.item() == pytest.approx(ref, rel=1e-4)


def test_empty_lambda_and_zero_kspace_give_zero_loss_and_finite_gradients():
    u = torch.zeros(3, 2, 6, 6, dtype=torch.complex64)
    u[2] = 1.0
    v = torch.randn(3, 2, 6, 6, dtype=torch.complex64, requires_grad=True)
    lam = torch.ones(3, 1, 6, 6)
    lam[0] = 0  # empty Lambda; sample 1: all-zero k-space on Lambda; sample 2 fine
    res = ssdu_loss(v, u, lam)
    assert res.valid.tolist() == [False, False, True]
    assert torch.isfinite(res.loss) and res.per_sample[:2].abs().sum() == 0
    assert res.loss.item() == pytest.approx(res.per_sample[2].item())
    res.loss.backward()
    assert torch.isfinite(torch.view_as_real(v.grad)).all()
    assert v.grad[:2].abs().sum() == 0
    nothing = ssdu_loss(v, torch.zeros_like(u), lam)
    assert nothing.loss.item() == 0.0 and not nothing.valid.any()
    # a perfect prediction: zero difference, finite gradient (sqrt at 0 guarded)
    w = u.clone().requires_grad_(True)
    ssdu_loss(w, u, lam).loss.backward()
    assert torch.isfinite(torch.view_as_real(w.grad)).all()


def test_relative_l2_and_energy_ratio():
    t = torch.tensor([[3.0, 4.0]])
    s = torch.tensor([[3.0, 1.0]])
    assert relative_l2(s, t).loss.item() == pytest.approx(3 / 5)
    assert relative_l2(s, torch.zeros_like(t)).loss.item() == 0.0
    assert energy_ratio(2 * t, t).item() == pytest.approx(4.0)
    assert math.isnan(energy_ratio(t, torch.zeros_like(t)).item())


def _data(b: int = 2, coils: int = 3, h: int = 16, w: int = 16):
    k = torch.from_numpy(make_kspace(slices=b, coils=coils, h=h, w=w, seed=2))
    mask = torch.zeros(1, 1, 1, w)
    mask[..., w // 2 - 2 : w // 2 + 2] = 1
    mask[..., [1, 3, 5, 11, 13]] = 1
    mask = mask.repeat(b, 1, 1, 1)
    return k * mask, mask


def _net() -> UnrolledNet:
    torch.manual_seed(0)
    return UnrolledNet(cascades=2, dc="cg", cg_iters=3, chans=4, num_blocks=1, maps="given")


def test_network_on_theta_never_sees_lambda():
    kspace, mask = _data()
    maps = estimate_maps(kspace, mask)
    step = ssdu_step(_net(), kspace, mask, maps, SplitOptions(centre=(2, 2)), [[0, 0], [0, 1]])
    perturbed = kspace + 5.0 * step.lam.to(kspace.real.dtype) * torch.randn_like(kspace)
    with torch.no_grad():
        a = run_model(_net(), kspace, step.theta, maps)
        b = run_model(_net(), perturbed, step.theta, maps)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(step.theta + step.lam, torch.broadcast_to(mask, step.theta.shape))


def test_multi_mask_ssdu_runs_k_splits_per_slice():
    kspace, mask = _data()
    step = ssdu_step(_net(), kspace, mask, estimate_maps(kspace, mask), SplitOptions(centre=(2, 2)), [[0, 0], [0, 1]],
                     num_masks=3)
    assert step.output.shape == (6, 16, 16) and step.lam.shape[0] == 6
    lams = step.lam.reshape(3, 2, -1)
    assert not torch.equal(lams[0], lams[1]) and not torch.equal(lams[1], lams[2])  # 3 different splits per slice
    assert step.loss.valid.all() and torch.isfinite(step.loss.loss)
    step.loss.loss.backward()


def test_single_coil_predicted_kspace_and_extreme_splits_stay_finite():
    kspace, mask = _data(coils=1)
    assert estimate_maps(kspace, mask) is None
    x = torch.randn(2, 16, 16, dtype=torch.complex64)
    assert forward_op(x, None, mask).shape == (2, 1, 16, 16)
    # Lambda of one line, and that line's k-space all zero: the loss is 0 for that slice, never NaN
    one = torch.zeros(1, 1, 1, 16)
    one[..., 6:10] = 1
    one[..., 3] = 1
    one = one.repeat(2, 1, 1, 1)
    k = kspace * one
    k[0, :, :, 3] = 0
    net = UnrolledNet(cascades=1, dc="cg", cg_iters=2, chans=4, num_blocks=1, multicoil=False)
    step = ssdu_step(net, k, one, None, SplitOptions(centre=(0, 4), mode="lines"), [[0, 0], [0, 1]])
    assert step.lam.sum().item() == 2 and step.loss.valid.tolist() == [False, True]
    step.loss.loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # all-zero rows in the acquired k-space (e.g. a dead coil) do not produce NaN either
    k2, mask = _data()
    k2[:, :, :4] = 0
    step2 = ssdu_step(_net(), k2, mask, estimate_maps(k2, mask), SplitOptions(centre=(2, 2)), [[1, 0], [1, 1]])
    assert torch.isfinite(step2.loss.loss) and torch.isfinite(step2.output).all()


@pytest.mark.parametrize("scale", [1e-6, 1e12])
def test_odd_matrix_many_coils_and_extreme_scales(scale):
    k = torch.from_numpy(make_kspace(slices=1, coils=5, h=23, w=17, seed=4)) * scale
    mask = torch.zeros(1, 1, 1, 17)
    mask[..., 6:11] = 1
    mask[..., [0, 2, 13, 15]] = 1
    kspace = k * mask
    torch.manual_seed(0)
    net = UnrolledNet(cascades=1, dc="cg", cg_iters=2, chans=4, num_blocks=1, maps="given")
    step = ssdu_step(net, kspace, mask, estimate_maps(kspace, mask), SplitOptions(centre=(3, 3), selection="gaussian"),
                     [[0, 0]], num_masks=2)
    assert step.output.shape == (2, 23, 17) and torch.isfinite(step.output).all()
    assert torch.isfinite(step.loss.loss) and 0 < step.loss.loss.item() < 10 and step.loss.valid.all()
