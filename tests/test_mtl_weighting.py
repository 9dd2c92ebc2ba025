"""Closed-form behaviour of the multi-task loss weightings and gradient combinations (mrlearn.mtl.weighting)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrlearn.errors import MrlearnError
from mrlearn.mtl import weighting as W

torch.set_num_threads(1)


def test_equal_fixed_inverse():
    assert W.build_weighting("equal", 2).weights().tolist() == [1.0, 1.0]
    fixed = W.build_weighting({"name": "fixed", "weights": [0.5, 2.0]}, 2)
    assert fixed.task_loss(1, torch.tensor(3.0)).item() == pytest.approx(6.0)
    # lambda_t = T (N - N_t) / N for two tasks: sizes 300 / 100 -> 0.5 / 1.5
    inv = W.build_weighting("inverse", 2, sizes=[300, 100])
    assert inv.weights().tolist() == pytest.approx([0.5, 1.5])
    assert sum(W.inverse_size_weights([10, 20, 70])) == pytest.approx(3.0)


def test_dwa_from_loss_history():
    assert W.dwa_weights([[1.0, 2.0]]).tolist() == [1.0, 1.0]  # fewer than two epochs: ones
    hist = [[1.0, 1.0], [0.5, 0.9]]  # w = (0.5, 0.9)
    w = np.array([0.5, 0.9])
    expected = 2 * np.exp(w / 2) / np.exp(w / 2).sum()
    assert W.dwa_weights(hist, 2.0) == pytest.approx(expected)
    dwa = W.build_weighting({"name": "dwa"}, 2)
    dwa.epoch_end([1.0, 1.0])
    assert dwa.weights().tolist() == [1.0, 1.0]
    dwa.epoch_end([0.5, 0.9])
    assert dwa.weights().numpy() == pytest.approx(expected, rel=1e-6)
    assert float(dwa.weights().sum()) == pytest.approx(2.0)
    # the slower task (ratio closer to 1) gets the larger weight
    assert dwa.weights()[1] > dwa.weights()[0]
    # state survives a state_dict round trip (checkpoints)
    other = W.build_weighting({"name": "dwa"}, 2)
    other.load_state_dict(dwa.state_dict())
    assert other.history == dwa.history and torch.equal(other.lam, dwa.lam)


def test_uncertainty_loss_and_optimum():
    u = W.build_weighting("uncertainty", 2)
    with torch.no_grad():
        u.log_var[1] = math.log(4.0)
    val = u.task_loss(1, torch.tensor(2.0))
    assert val.item() == pytest.approx(0.5 * 2.0 / 4.0 + 0.5 * math.log(4.0))
    # d/ds [exp(-s) L / 2 + s / 2] = 0 at s = log L
    u2 = W.Uncertainty(1)
    u2.log_var.data[0] = math.log(3.0)
    loss = u2.task_loss(0, torch.tensor(3.0))
    loss.backward()
    assert u2.log_var.grad[0].item() == pytest.approx(0.0, abs=1e-6)


def test_mgda_two_tasks_matches_analytic_min_norm():
    g1 = torch.tensor([1.0, 0.0, 0.0])
    g2 = torch.tensor([0.2, 1.0, 0.0])
    gamma = float(torch.clamp(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)), 0, 1))
    G = torch.stack([g1, g2])
    w = W.min_norm_weights(G @ G.T)
    assert w.tolist() == pytest.approx([gamma, 1 - gamma], abs=1e-6)
    d = w @ G
    # the min-norm point is orthogonal to the segment (interior solution) and has non-negative dot with both
    assert float(d @ (g1 - g2)) == pytest.approx(0.0, abs=1e-6)
    assert float(d @ g1) >= -1e-7 and float(d @ g2) >= -1e-7
    # Frank-Wolfe path (3 tasks, one duplicated) reaches the same point
    G3 = torch.stack([g1, g2, g2]).double()
    w3 = W.min_norm_weights(G3 @ G3.T, iters=500)
    assert (w3 @ G3).float().numpy() == pytest.approx(d.numpy(), abs=1e-3)
    m = W.build_weighting("mgda", 2)
    out = m.combine(G, [0, 1])
    assert out.numpy() == pytest.approx((2 * d).numpy(), abs=1e-5)  # weights scaled to sum T = 2
    assert float(m.weights().sum()) == pytest.approx(2.0)


def test_mgda_brute_force_three_tasks():
    gen = torch.Generator().manual_seed(3)
    G = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    w = W.min_norm_weights(G @ G.T, iters=2000)
    best = min(float(((torch.tensor([a, b, 1 - a - b], dtype=torch.float64)) @ G).norm())
               for a in np.linspace(0, 1, 101) for b in np.linspace(0, 1, 101) if a + b <= 1)
    assert float((w @ G).norm()) <= best + 1e-3


def test_pcgrad_removes_conflicting_component():
    g1 = torch.tensor([1.0, 1.0])
    g2 = torch.tensor([-1.0, 0.0])  # conflicts with g1 (dot = -1)
    out = W.pcgrad(torch.stack([g1, g2]), torch.Generator().manual_seed(0))
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2  # (0, 1)
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1  # (-0.5, 0.5)
    assert out.numpy() == pytest.approx((p1 + p2).numpy())
    assert float(p1 @ g2) == pytest.approx(0.0) and float(p2 @ g1) == pytest.approx(0.0)
    # no conflict: plain sum
    g3 = torch.tensor([0.5, 2.0])
    assert W.pcgrad(torch.stack([g1, g3])).numpy() == pytest.approx((g1 + g3).numpy())


def test_cagrad_sanity():
    gen = torch.Generator().manual_seed(1)
    G = torch.tensor([[1.0, 0.1], [-0.6, 1.0]], dtype=torch.float64)
    g0 = G.mean(0)
    assert W.cagrad(G, c=0.0).numpy() == pytest.approx(g0.numpy())
    d = W.cagrad(G, c=0.5)
    assert float((d - g0).norm()) <= 0.5 * float(g0.norm()) + 1e-6  # inside the trust ball
    assert float((G @ d).min()) >= float((G @ g0).min()) - 1e-9  # worst task no worse than the mean direction
    # identical gradients: d = (1 + c) g
    same = torch.stack([g0, g0])
    assert W.cagrad(same, c=0.5).numpy() == pytest.approx((1.5 * g0).numpy())
    # the worst-case improvement is maximal over random directions in the ball
    for _ in range(200):
        v = torch.randn(2, generator=gen, dtype=torch.float64)
        cand = g0 + 0.5 * g0.norm() * v / v.norm()
        assert float((G @ cand).min()) <= float((G @ d).min()) + 1e-4


def test_gradnorm_moves_weight_towards_slower_task():
    w = torch.tensor([1.0, 1.0])
    norms = torch.tensor([1.0, 1.0])
    initial = torch.tensor([1.0, 1.0])
    losses = torch.tensor([0.2, 0.8])  # task 1 trains slower: its target norm is larger
    new = W.gradnorm_update(w, norms, losses, initial, alpha=1.5, lr=0.1)
    assert new[1] > new[0] and float(new.sum()) == pytest.approx(2.0)
    # balanced losses and norms: a fixed point
    same = W.gradnorm_update(w, norms, torch.tensor([0.5, 0.5]), initial, 1.5, 0.1)
    assert same.tolist() == pytest.approx([1.0, 1.0])
    gn = W.build_weighting({"name": "gradnorm", "alpha": 1.5}, 2)
    gn.after_step(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]), [0, 1])
    gn.after_step(torch.tensor([1.0, 1.0]), torch.tensor([0.2, 0.8]), [0, 1])
    assert gn.weights()[1] > gn.weights()[0]


def test_bad_sections_are_one_line_errors():
    with pytest.raises(MrlearnError, match=r"tasks.weighting.name: unknown weighting 'dwb'"):
        W.build_weighting("dwb", 2)
    with pytest.raises(MrlearnError, match=r"tasks.weighting.temp: unknown option"):
        W.build_weighting({"name": "dwa", "temp": 2}, 2)
    with pytest.raises(MrlearnError, match=r"tasks.weighting.weights: needs 2"):
        W.build_weighting({"name": "fixed", "weights": [1.0]}, 2)
    with pytest.raises(MrlearnError, match=r"tasks.weighting.temperature: expected a number"):
        W.build_weighting({"name": "dwa", "temperature": "hot"}, 2)
