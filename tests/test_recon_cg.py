"""Batched complex CG (mrlearn.recon.cg) and the zero-filled / CG-SENSE reconstructions: closed forms."""

import pytest
import torch

from mrlearn.errors import MrlearnError
from mrlearn.physics.fft import fft2c, ifft2c
from mrlearn.physics.sense import sense_forward
from mrlearn.recon.cg import conjugate_gradient
from mrlearn.recon.cg_sense import cg_sense
from mrlearn.recon.zero_filled import sense_zero_filled, zero_filled_rss


def _hpd(b: int, n: int, cond: list[float], gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(b, n, n, dtype=torch.complex128, generator=gen))
    eig = torch.stack([torch.logspace(0, torch.log10(torch.tensor(c)), n, dtype=torch.float64) for c in cond])
    return q @ torch.diag_embed(eig.to(torch.complex128)) @ q.mH


def test_cg_solves_batched_hpd_systems_with_per_sample_steps():
    """Per-sample steps: three systems of condition 1, 10, 100 solved in one batch to rounding level.

    Tolerances follow the conditioning, not one CPU's rounding: in floating point CG loses the finite-termination
    property (n steps) but reaches a relative error of order ``kappa * eps`` once converged, so after ``4 n``
    iterations each sample must be within ``n * kappa * eps`` (float64), with a factor 10 of margin. Condition 1
    (the identity times a constant) is solved by the first step exactly.
    """
    gen = torch.Generator().manual_seed(0)
    n, conds = 12, [1.0, 10.0, 100.0]
    a = _hpd(3, n, conds, gen)
    x_true = torch.randn(3, n, dtype=torch.complex128, generator=gen)
    rhs = (a @ x_true.unsqueeze(-1)).squeeze(-1)
    op = lambda v: (a @ v.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    x = conjugate_gradient(op, rhs, max_iter=4 * n)
    eps = torch.finfo(torch.float64).eps
    rel = torch.linalg.vector_norm(x - x_true, dim=-1) / torch.linalg.vector_norm(x_true, dim=-1)
    for i, kappa in enumerate(conds):
        assert float(rel[i]) <= 10 * n * kappa * eps, (kappa, float(rel[i]))
    one = conjugate_gradient(op, rhs, max_iter=1)
    assert float(torch.linalg.vector_norm(one[0] - x_true[0]) / torch.linalg.vector_norm(x_true[0])) <= 10 * eps
    # a single shared step size would not solve all three: check the samples really differ in conditioning
    assert float(torch.linalg.vector_norm(one[2] - x_true[2])) > 1e-3 * float(torch.linalg.vector_norm(x_true[2]))


def test_cg_tolerance_freezes_converged_samples_and_respects_x0():
    gen = torch.Generator().manual_seed(1)
    a = _hpd(2, 8, [2.0, 50.0], gen)
    op = lambda v: (a @ v.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    x_true = torch.randn(2, 8, dtype=torch.complex128, generator=gen)
    rhs = op(x_true)
    x = conjugate_gradient(op, rhs, x0=x_true.clone(), max_iter=5, tol=1e-6)
    assert torch.equal(x, x_true)  # already converged: no update at all
    x = conjugate_gradient(op, rhs, max_iter=50, tol=1e-10)
    assert torch.linalg.vector_norm(op(x) - rhs) / torch.linalg.vector_norm(rhs) < 1e-9


def _maps(c: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    maps = []
    for i in range(c):
        ang = 2 * torch.pi * i / c
        cy, cx = torch.sin(torch.tensor(ang)), torch.cos(torch.tensor(ang))
        mag = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 1.5)
        maps.append(mag * torch.exp(1j * (0.7 * i + xx * (i - 1.5))))
    maps = torch.stack(maps).to(torch.complex64)
    return maps / torch.sqrt((maps.abs() ** 2).sum(0, keepdim=True))


def test_cg_sense_matches_closed_form_for_fully_sampled_unit_maps():
    gen = torch.Generator().manual_seed(2)
    maps = _maps(4, 24, 20, gen)[None]
    img = torch.randn(1, 24, 20, dtype=torch.complex64, generator=gen)
    ksp = sense_forward(img, maps)
    lam = 0.3
    # sum_c |S_c|^2 = 1 and full sampling: A^H A = I, so x = A^H y / (1 + lam) = img / (1 + lam)
    x = cg_sense(ksp, None, maps, lam=lam, max_iter=5)
    assert torch.allclose(x, img / (1 + lam), atol=1e-5)


def test_cg_sense_undersampled_solves_the_normal_equations():
    gen = torch.Generator().manual_seed(3)
    maps = _maps(4, 24, 20, gen)[None]
    img = torch.randn(1, 24, 20, dtype=torch.complex64, generator=gen)
    mask = (torch.rand(20, generator=gen) < 0.5).float().reshape(1, 1, 1, 20)
    ksp = sense_forward(img, maps, mask)
    x = cg_sense(ksp, mask, maps, lam=0.05, max_iter=200, tol=1e-7)
    from mrlearn.physics.sense import sense_adjoint, sense_normal
    resid = sense_normal(x, maps, mask) + 0.05 * x - sense_adjoint(ksp, maps, mask)
    assert resid.abs().max() < 1e-4 * sense_adjoint(ksp, maps, mask).abs().max()


def test_zero_filled_rss_and_sense_combination():
    gen = torch.Generator().manual_seed(4)
    ksp = torch.randn(2, 3, 16, 12, dtype=torch.complex64, generator=gen)
    mask = torch.zeros(12)
    mask[::2] = 1
    out = zero_filled_rss(ksp, mask)
    expected = torch.sqrt((ifft2c(ksp * mask).abs() ** 2).sum(1))
    assert out.shape == (2, 16, 12) and torch.allclose(out, expected, atol=1e-6)
    maps = _maps(3, 16, 12, gen)[None].expand(2, -1, -1, -1)
    comb = sense_zero_filled(fft2c(maps * ifft2c(ksp).abs()[:, :1]), None, maps)
    # A^H A x = x for unit maps
    assert torch.allclose(comb, ifft2c(ksp).abs()[:, 0].to(comb.dtype), atol=1e-5)


def test_bad_maps_and_masks_are_one_line_errors():
    ksp = torch.zeros(1, 4, 16, 12, dtype=torch.complex64)
    with pytest.raises(MrlearnError, match=r"sens_maps: shape \(1, 4, 16, 10\) does not match"):
        cg_sense(ksp, None, torch.ones(1, 4, 16, 10, dtype=torch.complex64))
    with pytest.raises(MrlearnError, match="multi-coil k-space .* needs sensitivity maps"):
        cg_sense(ksp, None, None)
    with pytest.raises(MrlearnError, match="mask: shape .* does not broadcast"):
        zero_filled_rss(ksp, torch.ones(7))
    with pytest.raises(MrlearnError, match="kspace: expected complex k-space"):
        zero_filled_rss(torch.zeros(4, 16, 12, 2, 1))
    for err in (MrlearnError,):
        try:
            cg_sense(ksp, None, torch.ones(1, 3, 16, 12, dtype=torch.complex64))
        except err as exc:
            assert "\n" not in str(exc)
