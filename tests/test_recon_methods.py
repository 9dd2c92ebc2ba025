"""mrlearn.recon.reconstruct, the registered solvers, options, the fast normal operator, map support check."""

import warnings

import numpy as np
import pytest
import torch

from mrlearn.errors import MrlearnError
from mrlearn.physics.fft import fft2c
from mrlearn.physics.sense import sense_adjoint, sense_forward, sense_normal
from mrlearn.recon import METHOD_NAMES, reconstruct, valid_options
from mrlearn.recon.methods import solver
from mrlearn.physics.normal import SenseNormal
from mrlearn.recon.tv import grad2d, grad2d_adjoint


def _problem(s: int = 2, c: int = 4, h: int = 40, w: int = 32, seed: int = 0, noise: float = 1e-3):
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = (((yy / 0.8) ** 2 + (xx / 0.7) ** 2) < 1).float() - 0.5 * ((((yy - 0.2) / 0.3) ** 2 + (xx / 0.3) ** 2) < 1).float()
    maps = torch.stack([torch.exp(-((yy - torch.sin(torch.tensor(a))) ** 2 + (xx - torch.cos(torch.tensor(a))) ** 2))
                        * torch.exp(1j * 0.3 * i * xx) for i, a in enumerate(np.linspace(0, 6.28, c, endpoint=False))])
    maps = (maps / torch.sqrt((maps.abs() ** 2).sum(0))).to(torch.complex64)
    ksp = fft2c(maps * img).to(torch.complex64)
    ksp = torch.stack([ksp * (1 + 0.1 * i) for i in range(s)])
    ksp = ksp + noise * ksp.abs().max() * torch.randn(ksp.shape, dtype=torch.complex64, generator=gen)
    mask = torch.zeros(w)
    mask[::2] = 1
    mask[w // 2 - 5: w // 2 + 5] = 1
    return ksp, mask.reshape(1, 1, 1, w), maps[None].expand(s, -1, -1, -1), img


def test_tv_gradient_adjoint():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 7, dtype=torch.complex64, generator=gen)
    g = torch.randn(2, 2, 9, 7, dtype=torch.complex64, generator=gen)
    lhs, rhs = torch.vdot(grad2d(x).flatten(), g.flatten()), torch.vdot(x.flatten(), grad2d_adjoint(g).flatten())
    assert torch.allclose(lhs, rhs, rtol=1e-4)
    assert grad2d(torch.ones(1, 5, 5)).abs().max() == 0


@pytest.mark.parametrize("shape", [(24, 20), (23, 19)])
@pytest.mark.parametrize("coils", [3, None])
def test_fast_normal_operator_equals_the_centred_one(shape, coils):
    """F_c^H M F_c = F^H ifftshift(M) F for column, 2-D and no masks, even and odd sizes, multi- and single-coil
    (float64 rounding), and its gradient (the unrolled networks train through it) equals the centred one's."""
    h, w = shape
    gen = torch.Generator().manual_seed(0)
    maps = None if coils is None else torch.randn(2, coils, h, w, dtype=torch.complex128, generator=gen)
    x = torch.randn(2, h, w, dtype=torch.complex128, generator=gen)
    for mask in (None, (torch.rand(2, 1, 1, w, generator=gen) > 0.5).double(),
                 (torch.rand(2, 1, h, w, generator=gen) > 0.5).double()):
        ref = sense_adjoint(sense_forward(x, maps, mask), maps, None)  # centred FFTs, with shifts
        tol = 1e-12 * float(ref.abs().max())
        assert torch.allclose(SenseNormal(maps, mask)(x), ref, atol=tol)
        assert torch.allclose(sense_normal(x, maps, mask), ref, atol=tol)
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(SenseNormal(maps, mask)(xg).abs().sum(), xg)
        xr = x.clone().requires_grad_(True)
        (grad_ref,) = torch.autograd.grad(sense_adjoint(sense_forward(xr, maps, mask), maps, None).abs().sum(), xr)
        assert torch.allclose(grad, grad_ref, atol=1e-10 * float(grad_ref.abs().max()))


@pytest.mark.parametrize("method", ["cg-sense", "cs-l1", "tv"])
def test_regularised_methods_are_scale_equivariant_and_improve_on_zero_filling(method):
    ksp, mask, maps, img = _problem(s=1, h=32, w=24)
    fn = solver(method)
    opts = {"max_iter": 8, "cg_iter": 4} if method == "tv" else {"max_iter": 15}
    base = fn(ksp * mask, mask, maps, **opts)
    for scale in (1e-6, 1e12):
        scaled = fn(ksp * mask * scale, mask, maps, **opts)
        assert torch.allclose(scaled / scale, base, rtol=1e-3, atol=1e-4 * base.abs().max())
    zf = solver("sense")(ksp * mask, mask, maps)
    err = lambda x: float(((x.abs()[0] - img) ** 2).mean())  # noqa: E731
    assert err(base) < err(zf)


def test_reconstruct_numpy_torch_slice_volume_masks_and_crop():
    ksp, mask, maps, _ = _problem(s=2, c=4, h=40, w=32)
    out = reconstruct(ksp.numpy(), mask[0, 0, 0].numpy(), "cg-sense", recon_size=(30, 36), batch_size=1,
                      calib_size=10, kernel_size=5, max_iter=10)
    assert isinstance(out, np.ndarray) and out.shape == (2, 30, 36) and out.dtype == np.float32
    one = reconstruct(ksp[0], mask[0, 0, 0], "cg-sense", maps[0], max_iter=10)
    assert torch.is_tensor(one) and one.shape == (40, 32)
    # no mask: the sampling pattern is read from the zeros of the data; a 2-D [H, W] mask is the same thing
    assert torch.allclose(reconstruct(ksp[0] * mask[0], None, "cg-sense", maps[0], max_iter=10), one, atol=1e-5)
    two_d = mask[0, 0].expand(40, 32)
    assert torch.allclose(reconstruct(ksp[0], two_d, "cg-sense", maps[0], max_iter=10), one, atol=1e-5)
    rss = reconstruct(ksp, mask, "zero-filled")
    assert rss.shape == (2, 40, 32)
    single = reconstruct(ksp[:, :1], mask, "cs-l1", max_iter=5)
    assert single.shape == (2, 40, 32)


def test_poisson_like_2d_mask_calibrates_from_a_16_box():
    ksp, _, maps, img = _problem(s=1, c=6, h=64, w=48, noise=1e-3)
    gen = np.random.default_rng(0)
    mask = (gen.random((64, 48)) < 0.2).astype(np.float32)
    mask[24:40, 16:32] = 1  # a 16 x 16 calibration box, random samples elsewhere
    zf = reconstruct(ksp[0].numpy() * mask, mask, "zero-filled")
    out = reconstruct(ksp[0].numpy() * mask, mask, "cs-l1")
    inside = img.abs().numpy() > 0.3
    ref = reconstruct(ksp[0].numpy(), None, "sense", maps[0].numpy())
    err = lambda x: np.mean((x[inside] / x[inside].mean() - ref[inside] / ref[inside].mean()) ** 2)  # noqa: E731
    assert err(out) < 0.5 * err(zf)


def test_map_support_check_falls_back_without_crop():
    """Maps cropped to a sliver of the object (crop 0.99 on noisy data) would black out the image: a warning, then
    maps without crop; with enough calibration the default crop keeps most of the energy and stays silent."""
    from mrlearn.recon.driver import estimate_maps, support_energy

    ksp, mask, _, _ = _problem(s=1, c=8, h=64, w=48, noise=0.03)
    k = ksp * mask
    with pytest.warns(UserWarning, match="ESPIRiT map support keeps only"):
        maps = estimate_maps(k, mask, {"crop": 0.99, "calib_size": 10})
    assert float(support_energy(k, maps)[0]) > 0.99
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = estimate_maps(k, mask, {})
    assert float(support_energy(k, maps)[0]) > 0.5


def test_registry_options_and_bad_input():
    from mrlearn import registry

    assert set(METHOD_NAMES) <= set(registry.available("recon"))
    assert registry.lookup("recon", "cs-l1") is solver("cs-l1")
    assert {"lam", "max_iter", "calib_size", "kernel_size", "crop", "threshold", "lambda_convention"} <= set(
        valid_options("cs-l1"))
    ksp, mask, maps, _ = _problem(s=1)
    with pytest.raises(MrlearnError, match="options.lambda_: unknown option for method 'tv'; valid keys: .*lam") as exc:
        reconstruct(ksp, mask, "tv", maps, lambda_=1.0)
    assert "\n" not in str(exc.value)
    with pytest.raises(MrlearnError, match="unknown recon 'grappa'; choose one of"):
        reconstruct(ksp, mask, "grappa", maps)
    with pytest.raises(MrlearnError, match="options.max_iter"):
        reconstruct(ksp, mask, "cg-sense", maps, max_iter="many")
    with pytest.raises(MrlearnError, match=r"sens_maps: shape \(1, 3, 40, 32\) does not match k-space"):
        reconstruct(ksp, mask, "sense", maps[:, :3])
    with pytest.raises(MrlearnError, match="lambda_convention: unknown value 'fast'"):
        reconstruct(ksp, mask, "cs-l1", maps, lambda_convention="fast")
    few = torch.zeros(32)
    few[::4] = 1
    with pytest.raises(MrlearnError, match="fully sampled centre box"):
        reconstruct(ksp, few, "cg-sense", None)


@pytest.mark.parametrize("anisotropic", [False, True])
def test_tv_recon_minimises_its_own_objective(anisotropic):
    """Convex objective: at the ADMM result no random perturbation lowers it, and the other TV form's minimiser
    scores worse on it (so the two options really solve different problems, each to convergence)."""
    from mrlearn.recon.tv import tv_objective, tv_recon

    ksp, mask, maps, _ = _problem(s=1, h=24, w=20)
    ksp = ksp * mask
    lam_abs = 0.02 * float(ksp.abs().max())
    kw = dict(lam=lam_abs, max_iter=150, cg_iter=10, rho=0.2, lambda_convention="absolute")
    x = tv_recon(ksp, mask, maps, anisotropic=anisotropic, **kw)
    other = tv_recon(ksp, mask, maps, anisotropic=not anisotropic, **kw)
    args = (ksp.to(torch.complex128), mask, maps.to(torch.complex128), lam_abs, anisotropic)
    f = float(tv_objective(x.to(torch.complex128), *args)[0])
    assert f < float(tv_objective(other.to(torch.complex128), *args)[0]) * (1 - 1e-4)
    gen = torch.Generator().manual_seed(1)
    for step in (1e-2, 1e-3):
        for _ in range(8):
            d = torch.randn(x.shape, dtype=torch.complex128, generator=gen)
            d = d * step * x.abs().max() / d.abs().max()
            assert float(tv_objective(x.to(torch.complex128) + d, *args)[0]) >= f * (1 - 1e-6)


@pytest.mark.parametrize("method, quantity", [("cs-l1", "relative_change"), ("tv", "relative_change"),
                                              ("cg-sense", "relative_residual")])
def test_iterative_solvers_say_whether_their_tolerance_or_their_cap_stopped_them(method, quantity):
    """Without a tolerance (BART's fixed count) the cap stops the solver; with one it stops earlier once the
    stopping quantity is below it, and the record aggregates batches into the convergence fields of a run."""
    from mrlearn.recon.stopping import solver_record

    ksp, mask, maps, _ = _problem(s=1, h=32, w=24)
    fn = solver(method)
    capped, loose = {}, {}
    if method == "cg-sense":
        fn(ksp * mask, mask, maps, max_iter=2, tol=1e-12, info=capped)
        fn(ksp * mask, mask, maps, max_iter=200, tol=1e-3, info=loose)
    else:
        fn(ksp * mask, mask, maps, max_iter=3, info=capped)
        fn(ksp * mask, mask, maps, max_iter=300, tol=5e-2, info=loose)
    assert capped["iterations"] == capped["max_iter"] and capped["tolerance_met"] is False
    assert loose["tolerance_met"] is True and loose["iterations"] < 300 and loose[quantity] < loose["tol"]
    record = solver_record([capped, loose])
    assert record["stopped_by"] == "max_iter" and record["converged"] is False and record["monitor"] == quantity
    assert solver_record([loose])["stopped_by"] == "tolerance" and solver_record([]) is None
