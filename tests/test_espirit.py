"""ESPIRiT and ACS sensitivity maps: recovery of known smooth maps, scale invariance, batching, errors, BART."""

import shutil

import numpy as np
import pytest
import torch

from mrlearn.errors import MrlearnError
from mrlearn.physics.espirit import acs_sens_maps, calibration_region, espirit_sens_maps
from mrlearn.physics.fft import fft2c


def _phantom(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = ((yy / 0.8) ** 2 + (xx / 0.65) ** 2 < 1).float()
    img = img - 0.5 * (((yy - 0.2) / 0.3) ** 2 + (xx / 0.2) ** 2 < 1).float()
    img = img + 0.3 * (((yy + 0.3) / 0.15) ** 2 + ((xx - 0.2) / 0.25) ** 2 < 1).float()
    return img * torch.exp(1j * 0.5 * yy)


def _true_maps(c: int, h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    maps = []
    for i in range(c):
        ang = 2 * np.pi * i / c
        mag = torch.exp(-((yy - 1.2 * np.sin(ang)) ** 2 + (xx - 1.2 * np.cos(ang)) ** 2) / 1.2)
        maps.append(mag * torch.exp(1j * (0.4 * i + 0.8 * xx * np.cos(ang) + 0.8 * yy * np.sin(ang))))
    return torch.stack(maps).to(torch.complex64)


def _data(c: int = 6, h: int = 64, w: int = 54, noise: float = 1e-3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    img, maps = _phantom(h, w), _true_maps(c, h, w)
    ksp = fft2c(maps * img)
    ksp = ksp + noise * ksp.abs().max() * torch.randn(ksp.shape, dtype=torch.complex64, generator=gen)
    return ksp.to(torch.complex64), maps, img


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel |<a, b>| / (|a| |b|) over the coil axis 0."""
    num = (a.conj() * b).sum(0).abs()
    return num / (torch.linalg.vector_norm(a, dim=0) * torch.linalg.vector_norm(b, dim=0)).clamp_min(1e-12)


def test_espirit_recovers_known_smooth_maps_inside_the_object():
    ksp, maps, img = _data()
    est = espirit_sens_maps(ksp, calib_size=20)
    inside = img.abs() > 0.2
    ip = _inner(est, maps)
    assert ip[inside].min() > 0.98
    # unit norm where kept, and kept on (almost) the whole object
    norm = torch.linalg.vector_norm(est, dim=0)
    kept = norm > 0
    assert torch.allclose(norm[kept], torch.ones_like(norm[kept]), atol=1e-4)
    assert kept[inside].float().mean() > 0.97
    # cropping removes the empty background far from the object
    assert kept[~(img.abs() > 0)].float().mean() < 0.8


def test_espirit_power_method_matches_eigh_and_is_scale_free_and_batched():
    ksp, _, img = _data(c=4, h=48, w=40)
    ref = espirit_sens_maps(ksp, calib_size=16, kernel_size=5)
    inside = img.abs() > 0.2
    pw = espirit_sens_maps(ksp, calib_size=16, kernel_size=5, eig_method="power", num_iter=8)
    assert _inner(pw, ref)[inside].min() > 0.999
    for scale in (1e-6, 1e12):
        scaled = espirit_sens_maps(ksp * scale, calib_size=16, kernel_size=5)
        assert _inner(scaled, ref)[inside].min() > 0.999
    ksp2, _, _ = _data(c=4, h=48, w=40, seed=1)
    batch = espirit_sens_maps(torch.stack([ksp, ksp2]), calib_size=16, kernel_size=5)
    assert batch.shape == (2, 4, 48, 40)
    assert _inner(batch[0], ref)[inside].min() > 0.999


def test_espirit_undersampled_with_acs_and_odd_sizes():
    ksp, maps, img = _data(c=5, h=47, w=45)
    mask = torch.zeros(45)
    mask[::3] = 1
    mask[45 // 2 - 8: 45 // 2 + 8] = 1
    ksp = ksp * mask
    rows, cols = calibration_region(ksp[None], 24)
    assert cols.stop - cols.start >= 16 and rows.stop - rows.start == 24
    est = espirit_sens_maps(ksp, calib_size=24)
    assert _inner(est, maps)[img.abs() > 0.2].min() > 0.97


def test_acs_maps_are_a_low_resolution_estimate():
    ksp, maps, img = _data()
    mask = torch.zeros(54)
    mask[27 - 8: 27 + 8] = 1
    est = acs_sens_maps(ksp * mask)
    assert est.shape == maps.shape
    assert _inner(est, maps)[img.abs() > 0.2].mean() > 0.95


def test_small_box_adapts_the_kernel_and_too_small_is_a_one_line_error():
    ksp, maps, img = _data(c=4, h=32, w=32)
    mask = torch.zeros(32)
    mask[::2] = 1
    mask[14:19] = 1  # 5 centre columns (14..18): the 6 x 6 kernel shrinks to 6 x 3 and still calibrates
    est = espirit_sens_maps(ksp * mask)
    inside = (img.abs() > 0.3) & (est.abs().sum(0) > 0)
    assert inside.sum() > 0.8 * (img.abs() > 0.3).sum()
    assert _inner(est, maps / torch.linalg.vector_norm(maps, dim=0))[inside].median() > 0.95
    few = torch.zeros(32)
    few[::2] = 1
    few[16] = 1  # only the centre column in a row of gaps: no 3 x 3 box
    with pytest.raises(MrlearnError, match=r"kspace: only a 24 x 1 fully sampled centre box") as exc:
        espirit_sens_maps(ksp * few)
    assert "\n" not in str(exc.value) and "center fraction" in str(exc.value)
    with pytest.raises(MrlearnError, match="eig_method"):
        espirit_sens_maps(ksp, eig_method="qr")


@pytest.mark.skipif(shutil.which("bart") is None, reason="BART not installed")
def test_espirit_agrees_with_bart_ecalib():
    from mrlearn.recon import bart

    ksp, _, img = _data(c=6, h=64, w=54)
    ours = espirit_sens_maps(ksp).numpy()
    theirs, _ = bart.ecalib(ksp.numpy(), threads=1)
    both = (np.linalg.norm(ours, axis=0) > 0) & (np.linalg.norm(theirs, axis=0) > 0)
    inside = both & (img.abs().numpy() > 0.2)
    ip = _inner(torch.from_numpy(ours), torch.from_numpy(theirs)).numpy()
    assert inside.sum() > 0.9 * (img.abs().numpy() > 0.2).sum()
    assert ip[inside].min() >= 0.95


def test_top_eig_skip_by_frobenius_bound_and_threaded_eigh_are_exact():
    """The Frobenius skip only drops pixels that crop removes anyway; threaded eigh equals one batched call."""
    from mrlearn.physics.espirit import _eigh_threaded, _top_eig_cropped

    gen = torch.Generator().manual_seed(3)
    b, c, h, w = 1, 4, 6, 7
    g = torch.randn(b, h, w, c, 2, dtype=torch.complex64, generator=gen)
    g = g * torch.linspace(0.05, 1.0, h * w).reshape(1, h, w, 1, 1)  # eigenvalues from far below to above crop
    gram = (g @ g.mH).permute(0, 3, 4, 1, 2).contiguous()  # PSD rank 2, [B, C, C, h, w]
    crop = 0.8
    vals, vecs = torch.linalg.eigh(gram.permute(0, 3, 4, 1, 2))
    keep = vals[..., -1] >= crop
    assert 0 < int(keep.sum()) < h * w  # both kinds of pixel present
    vec, val = _top_eig_cropped(gram, crop)
    assert torch.equal(val >= crop, keep)
    assert torch.allclose(val[keep], vals[..., -1][keep], atol=1e-5)
    top = vecs[..., -1].permute(0, 3, 1, 2)
    overlap = (top.conj() * vec).sum(dim=1).abs()  # eigenvectors agree up to a phase where kept
    assert torch.allclose(overlap[keep], torch.ones_like(overlap[keep]), atol=1e-5)
    mats = gram.permute(0, 3, 4, 1, 2).reshape(-1, c, c)
    ref_vals, ref_vecs = torch.linalg.eigh(mats)
    t_vals, t_vecs = _eigh_threaded(mats, min_per_thread=1)
    assert torch.equal(t_vals, ref_vals) and torch.equal(t_vecs, ref_vecs)
