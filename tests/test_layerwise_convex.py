"""Convex reformulation of a two-layer block: closed-form identities, FISTA, recovery, gap vs patterns."""

import pytest
import torch
import torch.nn.functional as F

from mrlearn.errors import MrlearnError
from mrlearn.layerwise.blocks import LayerwiseNet, TwoLayerBlock
from mrlearn.layerwise.convex import (ConvexProblem, block_problem, gated_adjoint, gated_apply, group_prox,
                                      recover_relu_weights, relu_objective, sample_gates, solve_block, solve_convex)
from mrlearn.layerwise.fista import fista
from mrlearn.layerwise.patches import patch_matrix, pixel_matrix


def _images(seed=0, b=2, h=10, w=9):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 2, h, w, generator=g)
    target = x + 0.5 * F.avg_pool2d(x, 3, 1, 1) - 0.2 * x.roll(1, -1)
    return x, target


def test_patch_matrix_matches_conv2d():
    x, _ = _images()
    wt = torch.randn(5, 2, 3, 3)
    conv = F.conv2d(x, wt, padding=1)
    assert torch.allclose(patch_matrix(x, 3) @ wt.reshape(5, -1).T, pixel_matrix(conv), atol=1e-5)


def test_gated_adjoint_is_adjoint():
    x, _ = _images()
    Y = patch_matrix(x, 3).double()
    _, G = sample_gates(Y, 6, torch.Generator().manual_seed(1))
    V = torch.randn(6, Y.shape[1], 2, dtype=torch.float64)
    R = torch.randn(Y.shape[0], 2, dtype=torch.float64)
    lhs = (gated_apply(Y, G, V) * R).sum()
    rhs = (V * gated_adjoint(Y, G, R)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10)


def test_group_prox_is_the_prox():
    g = torch.Generator().manual_seed(0)
    V = torch.randn(4, 7, 2, generator=g, dtype=torch.float64)
    P = group_prox(V, 0.8)
    obj = lambda Z: 0.8 * Z.norm(dim=-2).sum() + 0.5 * ((Z - V) ** 2).sum()
    for _ in range(20):  # any perturbation is worse
        assert obj(P) <= obj(P + 1e-3 * torch.randn(V.shape, generator=g, dtype=torch.float64)) + 1e-12


def test_gated_objective_equals_relu_objective_when_gates_match():
    """Closed-form identity: with V_i = a_i h_i (a_i > 0) the gates 1[Y h_i >= 0] equal those of the recovered
    neurons, so the recovered ReLU block has exactly the convex objective."""
    x, target = _images()
    Y, X = patch_matrix(x, 3).double(), pixel_matrix(target - x).double()
    H, G = sample_gates(Y, 5, torch.Generator().manual_seed(2))
    a = torch.rand(5, 2, dtype=torch.float64) + 0.1
    V = H.T.unsqueeze(-1) * a.unsqueeze(1)  # [P, d, c]
    prob = ConvexProblem(Y=Y, X=X, G=G, beta=0.05, variant="gated")
    g, f = recover_relu_weights(V, "gated", 2, 3)
    assert g.shape[0] == 10
    assert relu_objective(Y, X, g, f, 0.05) == pytest.approx(prob.objective(V), rel=1e-10)
    # the same number through the torch block on images
    block = TwoLayerBlock(1, 3).double()
    block.set_weights(g, f)
    with torch.no_grad():
        data = 0.5 * ((block(x.double()) - target.double()) ** 2).sum() / Y.shape[0]
    wd = 0.5 * 0.05 * sum(float((p.detach() ** 2).sum()) for p in block.parameters())
    assert float(data + wd) == pytest.approx(prob.objective(V), rel=1e-10)


def test_relu_variant_recovery_identity_at_feasible_point():
    """A feasible (W, Z) (nonnegative multiples of the gate filters) recovers a ReLU block with the same objective."""
    x, target = _images(1)
    Y, X = patch_matrix(x, 3).double(), pixel_matrix(target - x).double()
    H, G = sample_gates(Y, 4, torch.Generator().manual_seed(3))
    W = H.T.unsqueeze(-1) * torch.rand(4, 1, 2, dtype=torch.float64)
    U = torch.stack((W, 0.5 * W))
    prob = ConvexProblem(Y=Y, X=X, G=G, beta=0.01, variant="relu")
    assert prob.cone_violation(U) == 0.0
    g, f = recover_relu_weights(U, "relu", 2, 3)
    assert relu_objective(Y, X, g, f, 0.01) == pytest.approx(prob.objective(U), rel=1e-10)


def test_fista_monotone_and_reaches_least_squares_optimum():
    """beta = 0: the gated problem is least squares over [D_1 Y, ..., D_P Y]; FISTA reaches its optimum."""
    x, target = _images(2, b=1, h=8, w=8)
    Y, X = patch_matrix(x, 3).double(), pixel_matrix(target - x).double()
    _, G = sample_gates(Y, 3, torch.Generator().manual_seed(4))
    prob = ConvexProblem(Y=Y, X=X, G=G, beta=0.0, variant="gated")
    M = torch.cat([G[:, i:i + 1] * Y for i in range(3)], dim=1)  # [n, P*d]
    sol = torch.linalg.lstsq(M, X).solution
    best = 0.5 * float(((M @ sol - X) ** 2).sum()) / Y.shape[0]
    U, hist, restarts, _ = solve_convex(prob, max_iter=5000, tol=1e-13)
    assert all(b <= a + 1e-15 for a, b in zip(hist, hist[1:]))
    assert hist[-1] == pytest.approx(best, rel=1e-4)


def test_fista_kkt_with_group_lasso():
    """beta > 0: the solution satisfies the group-lasso optimality conditions."""
    x, target = _images(3, b=1, h=8, w=8)
    prob = block_problem(x.double(), target.double(), 3, 4, beta=2e-3, generator=torch.Generator().manual_seed(5))
    U, hist, _, _ = solve_convex(prob, max_iter=5000, tol=1e-14)
    assert all(b <= a + 1e-15 for a, b in zip(hist, hist[1:]))
    _, grad = prob.smooth(U)
    norms = U.norm(dim=1)  # [P, c]
    gn = grad.norm(dim=1)
    assert bool((gn[norms == 0] <= prob.beta * (1 + 1e-3)).all())
    active = norms > 0
    assert active.any()
    resid = grad + prob.beta * U / norms.clamp_min(1e-30).unsqueeze(1)
    assert float(resid.norm(dim=1)[active].max()) < 1e-3 * prob.beta


def test_fista_restarts_keep_objective_monotone_on_ill_conditioned_problem():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(30, 10, generator=g, dtype=torch.float64) @ torch.diag(torch.logspace(0, 2, 10, dtype=torch.float64))
    b = torch.randn(30, generator=g, dtype=torch.float64)
    smooth = lambda x: (0.5 * float(((A @ x - b) ** 2).sum()), A.T @ (A @ x - b))
    res = fista(smooth, lambda v, t: v, lambda x: 0.0, torch.zeros(10, dtype=torch.float64), 1.0, max_iter=3000, tol=0)
    assert res.restarts > 0
    assert all(b2 <= a2 for a2, b2 in zip(res.history, res.history[1:]))
    best = 0.5 * float(((A @ torch.linalg.lstsq(A, b).solution - b) ** 2).sum())
    assert res.objective == pytest.approx(best, rel=1e-6)


def test_relu_variant_gap_small_and_convex_objective_decreases_with_patterns():
    x, target = _images(4, b=1, h=10, w=10)
    objs = []
    for P in (2, 8, 24):
        r = solve_block(x, target, kernel_size=3, num_patterns=P, beta=1e-3, variant="relu", max_iter=100, seed=0)
        assert abs(r.gap) <= 1e-2 * r.convex_objective
        objs.append(r.convex_objective)
    assert objs[2] < objs[1] < objs[0]


def test_gated_solution_trains_block_better_than_identity():
    x, target = _images(5, b=1, h=10, w=10)
    r = solve_block(x, target, kernel_size=3, num_patterns=16, beta=1e-4, variant="gated", max_iter=300)
    assert r.convex_objective < 0.5 * float(((target - x) ** 2).sum()) / 100
    assert r.num_neurons >= 1 and r.g_weight.shape[1:] == (2, 3, 3)


def test_bad_options_raise_one_line_errors():
    x, target = _images()
    with pytest.raises(MrlearnError, match="variant"):
        solve_block(x, target, variant="cone")
    with pytest.raises(MrlearnError, match="num_patterns"):
        solve_block(x, target, num_patterns=0)
    with pytest.raises(MrlearnError, match="beta"):
        solve_block(x, target, beta=-1.0)
    with pytest.raises(MrlearnError, match="kernel_size"):
        TwoLayerBlock(4, 4)
    with pytest.raises(MrlearnError, match="num_blocks"):
        LayerwiseNet(0)


def test_gated_block_on_images_has_the_convex_objective():
    x, target = _images(6, b=1, h=9, w=11)
    r = solve_block(x, target, kernel_size=3, num_patterns=6, beta=1e-3, variant="gated", max_iter=100, max_patches=None)
    block = r.gated_block()
    with torch.no_grad():
        data = 0.5 * float(((block(x) - target) ** 2).sum()) / (9 * 11)
    assert data + 1e-3 * float(r.solution.norm(dim=1).sum()) == pytest.approx(r.convex_objective, rel=1e-4)
    assert r.relu_objective >= r.convex_objective  # the ReLU recovery of a gated solution is not exact: gap >= 0 here
    relu = r.relu_block()
    assert relu(x).shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", ["gated", "relu"])
def test_solve_on_the_gpu_matches_the_cpu(variant):
    """The same seeded problem solved on the GPU and the CPU: the same filters, objectives within the tolerance's
    reach (float32 rounding changes the iterates, not the optimum)."""
    from mrlearn.layerwise.convex import recover_relu_weights, relu_objective, sample_gates, solve_convex_report

    out = {}
    for device in ("cpu", "cuda"):
        gen = torch.Generator().manual_seed(3)
        Y = torch.randn(600, 8, generator=gen)
        X = torch.relu(Y[:, :1]) - 0.5 * torch.relu(-Y[:, 1:3].sum(1, keepdim=True))
        Y, X = Y.to(device), X.to(device)
        H, G = sample_gates(Y, 16, gen)
        problem = ConvexProblem(Y=Y, X=X, G=G, beta=1e-3, variant=variant, H=H)
        sol = solve_convex_report(problem, max_iter=20000, tol=1e-7, generator=gen)
        g, f = recover_relu_weights(sol.U, variant, 2, 2)
        out[device] = (H, problem.objective(sol.U), relu_objective(Y, X, g, f, 1e-3), sol.converged, g.device.type)
    assert torch.equal(out["cpu"][0], out["cuda"][0])  # the filters come from the CPU generator
    assert out["cuda"][3] and out["cuda"][4] == "cpu"
    assert abs(out["cuda"][1] - out["cpu"][1]) <= 1e-3 * abs(out["cpu"][1])
    assert abs(out["cuda"][2] - out["cpu"][2]) <= 1e-2 * abs(out["cpu"][2]) + 1e-6
