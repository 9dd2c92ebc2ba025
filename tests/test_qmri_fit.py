"""Voxel-wise IVIM fits: noise-free recovery, Rician NLL versus a per-voxel scipy fit, stable log-Bessel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import torch

from mrlearn.errors import MrlearnError
from mrlearn.qmri.fit import fit_voxels
from mrlearn.qmri.likelihood import log_i0, rician_grad_curv, rician_nll
from mrlearn.qmri.signal import add_noise, get_model, sample_uniform

B = torch.tensor([0, 10, 20, 30, 50, 80, 100, 200, 400, 800], dtype=torch.float64)
RANGES = {"S0": (0.8, 1.2), "f": (0.1, 0.5), "D": (0.4, 3.0), "Dstar": (10.0, 150.0)}
NAMES = ("S0", "f", "D", "Dstar")


def _params(n: int, seed: int) -> torch.Tensor:
    return sample_uniform(RANGES, NAMES, n, torch.Generator().manual_seed(seed))


def test_log_i0_matches_scipy_and_is_stable_at_1e4():
    x = torch.tensor([0.0, 1e-3, 0.5, 3.0, 50.0, 700.0], dtype=torch.float64)
    ref = np.log(scipy.special.i0(x.numpy()))
    assert torch.allclose(log_i0(x), torch.from_numpy(ref), rtol=1e-12, atol=1e-12)
    big = log_i0(torch.tensor([1e4], dtype=torch.float64))
    asym = 1e4 - 0.5 * math.log(2 * math.pi * 1e4) + math.log1p(1 / 8e4)  # large-x expansion
    assert torch.isfinite(big).all() and abs(big.item() - asym) < 1e-8
    assert torch.isfinite(log_i0(torch.tensor([1e4], dtype=torch.float32))).all()


def test_rician_derivatives_match_autograd():
    g = torch.Generator().manual_seed(3)
    m = torch.rand(16, generator=g, dtype=torch.float64) + 0.01
    s = (torch.rand(16, generator=g, dtype=torch.float64) + 0.01).requires_grad_(True)
    sigma = 0.07
    terms = torch.stack([rician_nll(m[i:i + 1], s[i:i + 1], sigma) for i in range(16)])
    (grad_auto,) = torch.autograd.grad(terms.sum(), s, create_graph=True)
    curv_auto = torch.stack([torch.autograd.grad(grad_auto[i], s, retain_graph=True)[0][i] for i in range(16)])
    grad, curv = rician_grad_curv(m, s.detach(), sigma)
    assert torch.allclose(grad, grad_auto.detach(), rtol=1e-9, atol=1e-9)
    assert torch.allclose(curv, curv_auto.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model", ["ivim", "ivim_additive"])
@pytest.mark.parametrize("objective", ["nlls", "mle"])
def test_noise_free_signals_recovered(model, objective):
    fn, _ = get_model(model)
    theta = _params(200, seed=1)
    # sigma small: the Rician MLE of noise-free data sits sigma^2 / (2 m) below the signal
    res = fit_voxels(fn(theta, B), B, model, objective, sigma=1e-4)
    assert res.converged.float().mean() > 0.99
    tol = torch.tensor([1e-5, 1e-4, 1e-4, 1e-2], dtype=torch.float64)
    assert torch.all((res.params - theta).abs() <= tol * theta.abs().clamp_min(1)), (res.params - theta).abs().amax(0)


@pytest.mark.parametrize("model,rate", [("adc", 1.3), ("t2", 70.0)])
def test_monoexponential_models_recovered(model, rate):
    fn, _ = get_model(model)
    x = B if model == "adc" else torch.tensor([10, 20, 40, 60, 90, 120.0], dtype=torch.float64)
    theta = torch.tensor([[0.9, rate], [1.1, rate * 0.6]], dtype=torch.float64)
    res = fit_voxels(fn(theta, x), x, model, "nlls")
    assert torch.allclose(res.params, theta, rtol=1e-6)


def _scipy_fit(sig: np.ndarray, x0: np.ndarray, sigma: float, lo, hi, model_fn) -> float:
    b = B.numpy()

    def nll(p):
        pred = model_fn(torch.from_numpy(p), B).numpy()
        z = sig * pred / sigma**2
        return float(np.sum(2 * np.log(sigma) - np.log(sig) + (sig**2 + pred**2) / (2 * sigma**2)
                            - (np.log(scipy.special.i0e(z)) + z)))

    del b
    res = scipy.optimize.minimize(nll, x0, method="L-BFGS-B", bounds=list(zip(lo, hi)))
    return res.fun


def test_mle_reaches_scipy_objective_on_noisy_voxels():
    model = "ivim"
    fn, spec = get_model(model)
    theta = _params(50, seed=2)
    sigma = 1 / 15
    noisy = add_noise(fn(theta, B), 15, generator=torch.Generator().manual_seed(5))
    ours = fit_voxels(noisy, B, model, "mle", sigma=sigma)
    assert torch.allclose(ours.objective, rician_nll(noisy, fn(ours.params, B), sigma))
    # scipy L-BFGS-B per voxel, started at the truth (a favourable start)
    scipy_best = np.array([_scipy_fit(noisy[i].numpy(), theta[i].numpy(), sigma, spec.lower, spec.upper, fn)
                           for i in range(50)])
    diff = ours.objective.numpy() - scipy_best
    assert np.all(diff <= 1e-3), diff.max()
    assert diff.mean() <= 1e-5


def test_gpu_or_cpu_device_kept_and_flags_shape():
    fn, _ = get_model("ivim")
    theta = _params(8, seed=4)
    res = fit_voxels(fn(theta, B).float(), B, "ivim", "nlls")
    assert res.params.shape == (8, 4) and res.converged.dtype == torch.bool and res.objective.shape == (8,)


def test_bad_fit_inputs_raise_one_line_errors():
    fn, _ = get_model("ivim")
    sig = fn(_params(4, seed=0), B)
    with pytest.raises(MrlearnError, match="sigma"):
        fit_voxels(sig, B, "ivim", "mle", sigma=None)
    with pytest.raises(MrlearnError, match="objective"):
        fit_voxels(sig, B, "ivim", "l1")
    with pytest.raises(MrlearnError, match="unknown signal model"):
        fit_voxels(sig, B, "biexp", "nlls")
    with pytest.raises(MrlearnError, match="signals"):
        fit_voxels(sig[:, :5], B, "ivim", "nlls")
    with pytest.raises(MrlearnError, match="upper bound"):
        fit_voxels(sig, B, "ivim", "nlls", bounds=[(0, 2), (0, 1), (3, 1), (0, 300)])


def test_s0_bound_closed_form_follows_the_other_bounds():
    from mrlearn.qmri.bounds import resolve_bounds

    b = [50, 100, 200, 400, 800]

    def s0_max(f_p: float, d_hi: float, fast_hi: float) -> float:  # 2 / u_min at b_min = 50 s/mm^2
        return 2 / (f_p * math.exp(-0.05 * fast_hi) + (1 - f_p) * math.exp(-0.05 * d_hi))

    assert resolve_bounds("ivim", b)[0][1] == pytest.approx(s0_max(0.5, 5.0, 300.0))  # f capped at 0.5
    assert resolve_bounds("ivim", b, {"f": (0.0, 0.2)})[0][1] == pytest.approx(s0_max(0.2, 5.0, 300.0))
    assert resolve_bounds("ivim", b, {"D": (0.0, 3.0)})[0][1] == pytest.approx(s0_max(0.5, 3.0, 300.0))
    assert resolve_bounds("ivim_additive", b)[0][1] == pytest.approx(s0_max(0.5, 5.0, 305.0))
    assert resolve_bounds("ivim", b, {"S0": (0.0, 7.0), "f": (0.0, 0.2)})[0] == (0.0, 7.0)  # given S0 kept
    assert resolve_bounds("ivim", [0, 100, 800])[0] == (0.0, 2.0)
    # a fit follows the overridden f bound: its S0 bound is the closed form above
    fn, _ = get_model("ivim")
    res = fit_voxels(fn(_params(4, seed=5), torch.tensor(b, dtype=torch.float64)), torch.tensor(b, dtype=torch.float64),
                     "ivim", "nlls", bounds={"f": (0.0, 0.2)})
    assert res.bounds[1][0] == pytest.approx(s0_max(0.2, 5.0, 300.0))
