"""Unrolled physics-guided networks: CG data consistency vs dense solves, least-squares limit, gradient-step DC,
parameter counts, checkpointing, single/multi-coil, scale equivariance, a short optimisation, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from mrlearn import registry
from mrlearn.errors import MrlearnError
from mrlearn.models.data_consistency import ConjugateGradientDC, GradientDC
from mrlearn.models.resnet import ResNet
from mrlearn.models.sens_refine import acs_coil_images, acs_mask, normalise_by_rss
from mrlearn.models.unrolled import UnrolledNet
from mrlearn.physics.fft import fft2c
from mrlearn.physics.sense import sense_adjoint, sense_forward, sense_normal

H, W = 16, 16


def _crandn(*shape, seed=0, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    re = torch.randn(*shape, generator=g, dtype=torch.float64)
    im = torch.randn(*shape, generator=g, dtype=torch.float64)
    return torch.complex(re, im).to(dtype)


def _maps(b, c, h=H, w=W, seed=1, dtype=torch.complex128):
    """Smooth-ish random maps normalised to sum_c |S_c|^2 = 1 (so ||A^H A|| <= 1)."""
    s = _crandn(b, c, h, w, seed=seed)
    s = s + 3.0 * _crandn(b, c, 1, 1, seed=seed + 1)
    return (s / s.abs().pow(2).sum(1, keepdim=True).sqrt()).to(dtype)


def _column_mask(b, w=W, keep=0.5, centre=4, seed=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(b, 1, 1, w, generator=g) < keep).to(dtype)
    m[..., w // 2 - centre // 2 : w // 2 + centre // 2] = 1
    return m


def _problem(b=2, c=3, seed=0, dtype=torch.complex128):
    image = _crandn(b, H, W, seed=seed, dtype=dtype)
    maps = _maps(b, c, seed=seed + 10, dtype=dtype)
    mask = _column_mask(b, seed=seed + 20, dtype=torch.float64 if dtype == torch.complex128 else torch.float32)
    kspace = sense_forward(image, maps, mask)
    return kspace, mask, maps


def _dense(op, maps, mask, n=H * W):
    """Dense matrix of a linear ``op(image [.., H, W], maps, mask)`` per sample, ``[B, out, n]`` (column j = op(e_j))."""
    eye = torch.eye(n, dtype=maps.dtype).reshape(n, H, W)
    cols = [op(eye, maps[i : i + 1], mask[i : i + 1]).reshape(n, -1).T for i in range(maps.shape[0])]
    return torch.stack(cols)


def _dense_normal(maps, mask):
    """Dense ``A^H A`` per sample, ``[B, H*W, H*W]``; differentiable in the maps."""
    return _dense(sense_normal, maps, mask)


def _dense_forward(maps, mask):
    """Dense ``A`` per sample, ``[B, C*H*W, H*W]``."""
    return _dense(sense_forward, maps, mask)


def _zero_regularisers(model):
    with torch.no_grad():
        for cascade in model.cascades:
            for p in cascade.regulariser.parameters():
                p.zero_()


# ------------------------------------------------------------------------------------------ data consistency


def test_cg_dc_solves_the_regularised_normal_equations():
    kspace, mask, maps = _problem()
    z = _crandn(2, H, W, seed=5)
    dc = ConjugateGradientDC(lam_init=0.05, cg_iters=200).double()
    x = dc(z, kspace, mask, maps)
    lam = dc.lam.item()
    rhs = sense_adjoint(kspace, maps, mask) + lam * z
    dense = _dense_normal(maps, mask) + lam * torch.eye(H * W, dtype=maps.dtype)
    ref = torch.linalg.solve(dense, rhs.reshape(2, -1, 1)).reshape(2, H, W)
    assert torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref) < 1e-9


@pytest.mark.parametrize("cg_grad", ["implicit", "unrolled"])
def test_cg_dc_gradients_match_the_dense_solve(cg_grad):
    """d loss / d (z, lam, maps) of the CG layer equal autograd through torch.linalg.solve."""
    kspace, mask, maps0 = _problem(b=1, c=2, seed=3)
    z0 = _crandn(1, H, W, seed=6)
    weight = _crandn(1, H, W, seed=7)

    def loss_of(x):
        return (weight.conj() * x).real.sum() + x.abs().pow(2).sum()

    dc = ConjugateGradientDC(lam_init=0.1, cg_iters=300, cg_grad=cg_grad).double()
    z, maps = z0.clone().requires_grad_(True), maps0.clone().requires_grad_(True)
    loss_of(dc(z, kspace, mask, maps)).backward()

    lam = dc.log_lam.detach().clone().requires_grad_(True)
    z_ref, maps_ref = z0.clone().requires_grad_(True), maps0.clone().requires_grad_(True)
    lam_e = lam.exp()
    rhs = sense_adjoint(kspace, maps_ref, mask) + lam_e * z_ref
    dense = _dense_normal(maps_ref, mask) + lam_e * torch.eye(H * W, dtype=maps0.dtype)
    loss_of(torch.linalg.solve(dense, rhs.reshape(1, -1, 1)).reshape(1, H, W)).backward()

    for got, ref in ((z.grad, z_ref.grad), (maps.grad, maps_ref.grad), (dc.log_lam.grad, lam.grad)):
        assert torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref) < 1e-7


@pytest.mark.parametrize("coils", [None, 4])
def test_gradient_dc_decreases_the_data_residual(coils):
    b = 2
    maps = None if coils is None else _maps(b, coils, seed=4)
    mask = _column_mask(b, seed=8)
    kspace = sense_forward(_crandn(b, H, W, seed=9), maps, mask)
    dc = GradientDC(eta_init=1.0).double()
    for seed in range(3):
        z = _crandn(b, H, W, seed=20 + seed)
        x = dc(z, kspace, mask, maps)
        before = torch.linalg.vector_norm((sense_forward(z, maps, mask) - kspace).flatten(1), dim=1)
        after = torch.linalg.vector_norm((sense_forward(x, maps, mask) - kspace).flatten(1), dim=1)
        assert torch.all(after < 0.9 * before)
    if coils is None:  # single-coil with eta = 1: one step puts the measured samples back exactly
        assert torch.allclose(sense_forward(x, None, mask), kspace, atol=1e-12)


def test_zero_regulariser_and_small_lambda_give_the_least_squares_solution():
    kspace, mask, maps = _problem(b=2, c=4, seed=11)
    model = UnrolledNet(cascades=2, dc="cg", share_weights=False, chans=4, num_blocks=1, lam_init=1e-9,
                        cg_iters=150).double()
    _zero_regularisers(model)
    with torch.no_grad():
        out = model(kspace, mask, maps)
    a = _dense_forward(maps, mask)
    ref = torch.linalg.lstsq(a, kspace.reshape(2, -1, 1)).solution.reshape(2, H, W)
    assert torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref) < 1e-6


def test_zero_regulariser_gradient_cascades_reduce_the_residual_monotonically():
    kspace, mask, maps = _problem(b=1, c=3, seed=12)
    residuals = []
    for k in (1, 2, 4, 8):
        model = UnrolledNet(cascades=k, dc="gradient", chans=4, num_blocks=1).double()
        _zero_regularisers(model)
        with torch.no_grad():
            x = model(kspace, mask, maps)
        residuals.append(torch.linalg.vector_norm(sense_forward(x, maps, mask) - kspace).item())
    start = torch.linalg.vector_norm(sense_forward(sense_adjoint(kspace, maps, mask), maps, mask) - kspace).item()
    assert all(a < b for a, b in zip(residuals, [start] + residuals[:-1])), (start, residuals)


# ------------------------------------------------------------------------------------------ the network


def _resnet_params(chans, blocks, c_in=2):
    return (c_in * chans * 9 + chans) + blocks * 2 * (chans * chans * 9 + chans) + (chans * c_in * 9 + c_in)


@pytest.mark.parametrize("dc", ["gradient", "cg"])
def test_shared_vs_unshared_parameter_counts(dc):
    def count(m):
        return sum(p.numel() for p in m.parameters())

    per_cascade = _resnet_params(8, 2) + 1  # + eta or log_lam
    shared = UnrolledNet(cascades=3, dc=dc, share_weights=True, chans=8, num_blocks=2)
    unshared = UnrolledNet(cascades=3, dc=dc, share_weights=False, chans=8, num_blocks=2)
    assert count(shared) == per_cascade
    assert count(unshared) == 3 * per_cascade
    assert count(ResNet(chans=64, num_blocks=15)) == _resnet_params(64, 15)


@pytest.mark.parametrize("dc", ["gradient", "cg"])
def test_checkpointing_gives_identical_outputs_and_gradients(dc):
    kspace, mask, maps = _problem(b=2, c=3, seed=13, dtype=torch.complex64)
    torch.manual_seed(0)
    plain = UnrolledNet(cascades=2, dc=dc, share_weights=False, chans=8, num_blocks=2)
    ckpt = UnrolledNet(cascades=2, dc=dc, share_weights=False, chans=8, num_blocks=2, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    outs = []
    for model in (plain, ckpt):
        out = model(kspace, mask, maps)
        out.abs().pow(2).mean().backward()
        outs.append(out.detach())
    assert torch.equal(outs[0], outs[1])
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert p.grad is not None and torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("multicoil", [False, True])
@pytest.mark.parametrize("dc,regulariser", [("gradient", "resnet"), ("cg", "resnet"), ("cg", "unet")])
def test_forward_backward_single_and_multi_coil(multicoil, dc, regulariser):
    h, w, c = 15, 12, (5 if multicoil else 1)  # odd matrix size
    g = torch.Generator().manual_seed(14)
    image = torch.randn(2, h, w, generator=g, dtype=torch.complex64)
    mask = (torch.rand(2, 1, 1, w, generator=g) < 0.5).float()
    mask[..., w // 2 - 2 : w // 2 + 2] = 1
    maps = None
    if multicoil:
        maps = torch.randn(2, c, h, w, generator=g, dtype=torch.complex64) + 2
        maps = maps / maps.abs().pow(2).sum(1, keepdim=True).sqrt()
        kspace = sense_forward(image, maps, mask)
    else:
        kspace = sense_forward(image, None, mask)  # single-coil: the coil axis is kept, C = 1
    model = UnrolledNet(cascades=2, dc=dc, regulariser=regulariser, share_weights=False, chans=4, num_blocks=2,
                        num_pools=2, multicoil=multicoil)
    out = model(kspace, mask, maps)
    assert out.shape == (2, h, w) and out.dtype == torch.complex64
    out.abs().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad.abs().sum() > 0 for p in model.parameters() if p.ndim == 0)  # eta / log_lam get gradients


@pytest.mark.parametrize("scale", [1e-6, 1e12])
def test_output_scales_linearly_with_the_kspace(scale):
    kspace, mask, maps = _problem(b=1, c=3, seed=15, dtype=torch.complex64)
    torch.manual_seed(1)
    model = UnrolledNet(cascades=2, dc="cg", chans=8, num_blocks=2).eval()
    with torch.no_grad():
        ref = model(kspace, mask, maps)
        out = model(kspace * scale, mask, maps) / scale
    assert torch.isfinite(out).all()
    assert torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref) < 1e-5


def _phantom_problem(coils=4, n=24):
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    img = torch.as_tensor(resize(shepp_logan_phantom(), (n, n), anti_aliasing=True), dtype=torch.float32)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    angles = torch.arange(coils) * 2 * math.pi / coils
    maps = torch.stack([torch.exp(-((yy - 1.2 * torch.sin(a)) ** 2 + (xx - 1.2 * torch.cos(a)) ** 2) / 1.5)
                        * torch.exp(1j * (a + 0.5 * xx)) for a in angles])[None].to(torch.complex64)
    maps = maps / maps.abs().pow(2).sum(1, keepdim=True).sqrt()
    mask = torch.zeros(1, 1, 1, n)
    mask[..., ::3] = 1
    mask[..., n // 2 - 3 : n // 2 + 3] = 1
    kspace = fft2c(maps * img.to(torch.complex64)) * mask
    return kspace, mask, maps, img[None]


@pytest.mark.parametrize("dc", ["gradient", "cg"])
def test_a_few_optimisation_steps_on_a_phantom_reduce_the_loss(dc):
    torch.manual_seed(0)
    kspace, mask, maps, target = _phantom_problem()
    model = UnrolledNet(cascades=2, dc=dc, share_weights=False, chans=8, num_blocks=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = (model(kspace, mask, maps).abs() - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


# ------------------------------------------------------------------------------------------ sensitivities


def test_acs_mask_finds_the_centre_block():
    cols = torch.zeros(2, 1, 1, 12)
    cols[0, ..., [0, 3, 5, 6, 7, 9]] = 1  # centre run 5..7 (centre index 6)
    cols[1, ..., [1, 2, 10]] = 1  # centre not sampled: fall back to the whole mask
    m = acs_mask(cols, (4, 12))
    assert m.shape == (2, 1, 4, 12)
    assert torch.equal(m[0, 0, 0], torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0.0]))
    assert torch.equal(m[1, 0], cols[1, 0].expand(4, 12))
    two_d = torch.zeros(1, 1, 8, 8)
    two_d[..., 3:6, 2:6] = 1
    two_d[..., 0, 0] = 1
    expect = torch.zeros(8, 8)
    expect[3:6, 2:6] = 1
    assert torch.equal(acs_mask(two_d, (8, 8))[0, 0], expect)


def test_acs_maps_are_exact_for_band_limited_coil_images():
    """Coil images whose k-space lies inside the ACS block come back exactly, divided by their RSS."""
    coil_k = torch.zeros(1, 3, H, W, dtype=torch.complex128)
    coil_k[..., H // 2 - 2 : H // 2 + 2, W // 2 - 2 : W // 2 + 2] = _crandn(1, 3, 4, 4, seed=16)
    mask = _column_mask(1, seed=17)
    coil_images = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(coil_k, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))
    got = normalise_by_rss(acs_coil_images(coil_k * mask, mask))
    ref = coil_images / coil_images.abs().pow(2).sum(1, keepdim=True).sqrt()
    assert torch.allclose(got, ref, atol=1e-10)
    assert torch.allclose(got.abs().pow(2).sum(1), torch.ones(1, H, W, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("option", [{"maps": "acs"}, {"sens_refine": True, "sens_chans": 4, "sens_pools": 2}])
def test_estimated_maps_without_given_maps(option):
    kspace, mask, _ = _problem(b=2, c=3, seed=18, dtype=torch.complex64)
    model = UnrolledNet(cascades=2, dc="cg", chans=4, num_blocks=1, **option)
    out = model(kspace, mask, None)
    out.abs().mean().backward()
    assert out.shape == (2, H, W) and torch.isfinite(out).all()
    if option.get("sens_refine"):
        grads = [p.grad for p in model.sens_net.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


# ------------------------------------------------------------------------------------------ registry, bad input


def test_registry_builds_the_model_and_rejects_bad_options():
    model = registry.build("model", {"name": "unrolled", "cascades": 3, "dc": "gradient", "share_weights": False,
                                     "chans": 4, "num_blocks": 1}, "model")
    assert isinstance(model, UnrolledNet) and len(model.cascades) == 3
    for section in ({"name": "unrolled", "dc": "admm"}, {"name": "unrolled", "cascades": 0},
                    {"name": "unrolled", "regulariser": "transformer"}, {"name": "unrolled", "lam_init": -1.0},
                    {"name": "unrolled", "cascade": 3}):
        with pytest.raises(MrlearnError) as err:
            registry.build("model", section, "model")
        assert "\n" not in str(err.value) and str(err.value).startswith("model")


def _one_line(err):
    msg = str(err.value)
    assert "\n" not in msg and ";" in msg
    return msg


def test_single_coil_data_given_to_a_multicoil_model_is_a_clear_error():
    kspace, mask, maps = _problem(b=1, c=3, seed=19, dtype=torch.complex64)
    model = UnrolledNet(cascades=1, chans=4, num_blocks=1)
    with pytest.raises(MrlearnError) as err:
        model(kspace[:, :1], mask, None)
    assert "single-coil" in _one_line(err) and "multicoil" in str(err.value)
    with pytest.raises(MrlearnError) as err:
        UnrolledNet(cascades=1, chans=4, num_blocks=1, multicoil=False)(kspace, mask, None)
    assert "3 coils" in _one_line(err)


def test_maps_of_the_wrong_shape_are_clear_errors():
    kspace, mask, maps = _problem(b=1, c=3, seed=21, dtype=torch.complex64)
    model = UnrolledNet(cascades=1, chans=4, num_blocks=1)
    with pytest.raises(MrlearnError) as err:
        model(kspace, mask, maps[:, :2])
    assert "2 coils" in _one_line(err) and "3" in str(err.value)
    with pytest.raises(MrlearnError) as err:
        model(kspace, mask, maps[..., :-1])
    assert "sens_maps shape" in _one_line(err)
    with pytest.raises(MrlearnError) as err:
        model(kspace, mask, None)
    assert "no sens_maps" in _one_line(err)
    with pytest.raises(MrlearnError) as err:
        model(kspace, mask[..., :-2], maps)
    assert "mask shape" in _one_line(err)


def test_bf16_autocast_keeps_complex_float32():
    """Under mixed precision (bf16 autocast, as trainer.precision=auto picks on CUDA) the network still runs."""
    kspace, mask, maps = _problem(b=1, c=3, seed=22, dtype=torch.complex64)
    model = UnrolledNet(cascades=2, dc="cg", regulariser="unet", chans=4, num_pools=2, sens_refine=True,
                        sens_chans=4, sens_pools=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(kspace, mask, None)
    assert out.dtype == torch.complex64 and torch.isfinite(out).all()


@pytest.mark.parametrize("typed", [True, False])
def test_reconstruct_batch_crops_and_rescales(typed):
    """The training-sample adapter: |model(kspace / scale)| cropped to the target size, times the scale."""
    from mrlearn.data.sample import Batch
    from mrlearn.models.unrolled import reconstruct_batch

    kspace, mask, maps = _problem(b=2, c=3, seed=23, dtype=torch.complex64)
    model = UnrolledNet(cascades=1, dc="gradient", chans=4, num_blocks=1)
    scale = torch.tensor([2.0, 1e-3])
    fields = {"kspace": kspace, "mask": mask, "sens_maps": maps, "scale": scale, "target": torch.zeros(2, 1, 10, 12)}
    out = reconstruct_batch(model, Batch(**fields) if typed else fields)
    with torch.no_grad():
        full = model(kspace, mask, maps).abs()
    assert out.shape == (2, 10, 12)
    assert torch.allclose(out, full[:, 3:13, 2:14] * scale[:, None, None], rtol=1e-5)


def test_single_coil_network_equals_the_explicit_maps_of_ones():
    """Single-coil data run through the same operator as one coil whose map is all ones."""
    from mrlearn.models.unrolled import normalised_start, run_cascades

    image = _crandn(2, H, W, seed=30, dtype=torch.complex64)
    mask = _column_mask(2, seed=31, dtype=torch.float32)
    kspace = sense_forward(image, None, mask)
    assert kspace.shape == (2, 1, H, W)
    torch.manual_seed(3)
    model = UnrolledNet(cascades=2, dc="cg", share_weights=False, chans=4, num_blocks=1, multicoil=False)
    ones = torch.ones(2, 1, H, W, dtype=torch.complex64)
    with torch.no_grad():
        got = model(kspace, mask, None)
        x, y, scale = normalised_start(kspace, mask, ones)
        ref = run_cascades([model.cascade(i) for i in range(2)], x, y, mask, ones) * scale
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_model_input_protocol():
    from torch import nn

    from mrlearn.models.protocol import input_kind
    from mrlearn.models.unet import Unet
    from mrlearn.mtl.networks import MultiTaskUnrolled

    assert input_kind(UnrolledNet(cascades=1, chans=4, num_blocks=1)) == "kspace"
    assert input_kind(MultiTaskUnrolled(cascades=2, split=1, chans=4, num_blocks=1)) == "kspace"
    assert input_kind(ResNet(chans=4, num_blocks=1)) == "image"
    assert input_kind(Unet(chans=4, num_pool_layers=2)) == "image"
    assert input_kind(nn.Conv2d(2, 2, 3)) == "image"  # undeclared: an image network

    class Odd(nn.Module):
        input_kind = "sinogram"

    with pytest.raises(MrlearnError, match="input_kind"):
        input_kind(Odd())


def test_espirit_maps_are_estimated_when_none_are_given():
    from mrlearn.physics.espirit import espirit_sens_maps

    image = _crandn(1, H, W, seed=24, dtype=torch.complex64)
    maps = _maps(1, 4, seed=25, dtype=torch.complex64)
    mask = _column_mask(1, centre=8, seed=26, dtype=torch.float32)
    kspace = sense_forward(image, maps, mask)
    torch.manual_seed(2)
    model = UnrolledNet(cascades=1, dc="gradient", chans=4, num_blocks=1, maps="espirit")
    with torch.no_grad():
        out = model(kspace, mask, None)
        ref = model(kspace, mask, espirit_sens_maps(kspace))
    assert torch.equal(out, ref)


@pytest.mark.parametrize("name", ["unrolled_demo", "unrolled_varnet"])
def test_shipped_configs_build_a_working_model(name):
    """The model sections of the shipped configs build through the registry and run on a tiny 3-coil slice."""
    from importlib.resources import files

    import yaml

    raw = yaml.safe_load((files("mrlearn") / "configs" / f"{name}.yaml").read_text())
    model = registry.build("model", raw["model"], "model")
    assert isinstance(model, UnrolledNet) and model.num_cascades == raw["model"]["cascades"]
    n = 32  # the 4-pool U-Nets need at least 2 x 2 pixels at the bottleneck
    image = _crandn(1, n, n, seed=27, dtype=torch.complex64)
    maps = torch.ones(1, 3, n, n, dtype=torch.complex64) / math.sqrt(3)
    mask = _column_mask(1, w=n, centre=6, seed=28, dtype=torch.float32)
    with torch.no_grad():
        out = model(sense_forward(image, maps, mask), mask, None)  # maps estimated in the model
    assert out.shape == (1, n, n) and torch.isfinite(out).all()
    if "supervised_kspace" not in registry.available("method"):
        pytest.skip("method 'supervised_kspace' (training/) is not in this checkout yet")
    from mrlearn.config import load_config

    cfg = load_config(name)
    assert cfg.model["name"] == "unrolled"
