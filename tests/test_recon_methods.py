"""reconstruct / reconstruct_volume / registry entries, TV operators, scale invariance and bad input."""

import numpy as np
import pytest
import torch

from mrlearn.errors import MrlearnError
from mrlearn.physics.fft import fft2c
from mrlearn.recon.methods import METHOD_NAMES, reconstruct, reconstruct_volume
from mrlearn.recon.tv import grad2d, grad2d_adjoint


def _problem(s: int = 2, c: int = 4, h: int = 40, w: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = (((yy / 0.8) ** 2 + (xx / 0.7) ** 2) < 1).float() - 0.5 * ((((yy - 0.2) / 0.3) ** 2 + (xx / 0.3) ** 2) < 1).float()
    maps = torch.stack([torch.exp(-((yy - torch.sin(torch.tensor(a))) ** 2 + (xx - torch.cos(torch.tensor(a))) ** 2))
                        * torch.exp(1j * 0.3 * i * xx) for i, a in enumerate(np.linspace(0, 6.28, c, endpoint=False))])
    maps = (maps / torch.sqrt((maps.abs() ** 2).sum(0))).to(torch.complex64)
    ksp = fft2c(maps * img).to(torch.complex64)
    ksp = torch.stack([ksp * (1 + 0.1 * i) for i in range(s)])
    ksp = ksp + 1e-3 * ksp.abs().max() * torch.randn(ksp.shape, dtype=torch.complex64, generator=gen)
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


@pytest.mark.parametrize("method", ["cg-sense", "cs-l1", "tv"])
def test_regularised_methods_are_scale_equivariant_and_improve_on_zero_filling(method):
    ksp, mask, maps, img = _problem(s=1, h=32, w=24)
    opts = {"max_iter": 8, "cg_iter": 4} if method == "tv" else {"max_iter": 15}
    base = reconstruct(method, ksp * mask, mask, maps, **opts)
    for scale in (1e-6, 1e12):
        scaled = reconstruct(method, ksp * mask * scale, mask, maps, **opts)
        assert torch.allclose(scaled / scale, base, rtol=1e-3, atol=1e-4 * base.abs().max())
    zf = reconstruct("sense", ksp * mask, mask, maps)
    err = lambda x: float(((x.abs()[0] - img) ** 2).mean())  # noqa: E731
    assert err(base) < err(zf)


def test_reconstruct_volume_numpy_in_out_with_espirit_and_crop():
    ksp, mask, maps, img = _problem(s=2, c=4, h=40, w=32)
    out = reconstruct_volume("cg-sense", ksp.numpy(), mask[0, 0, 0].numpy(), None, recon_size=(30, 36),
                             batch_size=1, espirit={"calib_size": 10, "kernel_size": 5}, max_iter=10)
    assert isinstance(out, np.ndarray) and out.shape == (2, 30, 36) and out.dtype == np.float32
    rss = reconstruct_volume("zero-filled", ksp, mask, recon_size=None)
    assert torch.is_tensor(rss) and rss.shape == (2, 40, 32)
    single = reconstruct_volume("cs-l1", ksp[:, :1], mask, recon_size=None, max_iter=5)
    assert single.shape == (2, 40, 32)


def test_registry_and_bad_input():
    from mrlearn import registry

    assert set(METHOD_NAMES) <= set(registry.available("recon"))
    ksp, mask, maps, _ = _problem(s=1)
    predict = registry.build("recon", {"name": "cg-sense", "lam": 0.02, "max_iter": 3}, "--method")
    out = predict({"kspace": ksp[0], "mask": mask[0, 0, 0], "sens_maps": maps[0], "recon_size": (20, 20)})
    direct = reconstruct("cg-sense", ksp * mask, mask, maps, lam=0.02, max_iter=3).abs()[0, 10:30, 6:26]
    assert out.shape == (20, 20) and torch.allclose(out, direct, atol=1e-5)
    with pytest.raises(MrlearnError, match="--method.lambda_: unknown option"):
        registry.build("recon", {"name": "tv", "lambda_": 1.0}, "--method")
    with pytest.raises(MrlearnError, match="method: unknown reconstruction method 'grappa'; choose one of"):
        reconstruct("grappa", ksp, mask, maps)
    with pytest.raises(MrlearnError, match=r"sens_maps: shape \(1, 3, 40, 32\) does not match k-space"):
        reconstruct_volume("sense", ksp, mask, maps[:, :3])
    with pytest.raises(MrlearnError, match="cs-l1 options"):
        reconstruct("cs-l1", ksp, mask, maps, lambda_=1.0)
    few = torch.zeros(32)
    few[::4] = 1
    with pytest.raises(MrlearnError, match="ACS"):
        reconstruct_volume("cg-sense", ksp, few, None)


@pytest.mark.parametrize("anisotropic", [False, True])
def test_tv_recon_minimises_its_own_objective(anisotropic):
    """Convex objective: at the ADMM result no random perturbation lowers it, and the other TV form's minimiser
    scores worse on it (so the two options really solve different problems, each to convergence)."""
    from mrlearn.recon.tv import tv_objective, tv_recon

    ksp, mask, maps, _ = _problem(s=1, h=24, w=20)
    ksp = ksp * mask
    lam_abs = 0.02 * float(ksp.abs().max())
    x = tv_recon(ksp, mask, maps, lam=lam_abs, max_iter=150, rho=0.2, absolute=True, anisotropic=anisotropic)
    other = tv_recon(ksp, mask, maps, lam=lam_abs, max_iter=150, rho=0.2, absolute=True, anisotropic=not anisotropic)
    args = (ksp.to(torch.complex128), mask, maps.to(torch.complex128), lam_abs, anisotropic)
    f = float(tv_objective(x.to(torch.complex128), *args)[0])
    assert f < float(tv_objective(other.to(torch.complex128), *args)[0]) * (1 - 1e-4)
    gen = torch.Generator().manual_seed(1)
    for step in (1e-2, 1e-3):
        for _ in range(8):
            d = torch.randn(x.shape, dtype=torch.complex128, generator=gen)
            d = d * step * x.abs().max() / d.abs().max()
            assert float(tv_objective(x.to(torch.complex128) + d, *args)[0]) >= f * (1 - 1e-6)
