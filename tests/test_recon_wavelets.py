"""Orthogonal Daubechies wavelets (mrlearn.recon.wavelets): orthonormality, inverse, adjoint, Haar closed form."""

import pytest
import torch

from mrlearn.errors import MrlearnError
from mrlearn.recon.wavelets import DAUBECHIES, default_levels, detail_mask, dwt2, idwt2, pad_shape


@pytest.mark.parametrize("name", list(DAUBECHIES))
def test_transform_is_orthonormal_and_inverted(name):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 24, dtype=torch.complex64, generator=gen)
    y = torch.randn(2, 32, 24, dtype=torch.complex64, generator=gen)
    c = dwt2(x, 3, name)
    assert torch.allclose(torch.linalg.vector_norm(c), torch.linalg.vector_norm(x), rtol=1e-5)
    assert torch.allclose(idwt2(c, 3, name), x, atol=1e-5)
    lhs = torch.vdot(dwt2(x, 3, name).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), idwt2(y, 3, name).flatten())
    assert torch.allclose(lhs, rhs, rtol=1e-4)


def test_filters_are_daubechies():
    for name, lo in DAUBECHIES.items():
        lo = torch.tensor(lo, dtype=torch.float64)
        n = int(name[2:])
        assert torch.isclose(lo.sum(), torch.tensor(2.0, dtype=torch.float64).sqrt()) and torch.isclose(lo.norm(), torch.tensor(1.0, dtype=torch.float64))
        k = torch.arange(len(lo), dtype=torch.float64)
        alt = (-1.0) ** k
        for p in range(n):  # n vanishing moments of the high-pass filter
            assert abs(float((alt * k**p * lo.flip(0)).sum())) < 1e-9


def test_haar_closed_form_and_coarse_band():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    c = dwt2(x, 1, "db1")
    # coarse band = 2 x 2 block means * 2 (orthonormal Haar in 2-D)
    blocks = x.reshape(1, 2, 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(1, 2, 2, 4).mean(-1) * 2
    assert torch.allclose(c[:, :2, :2], blocks)
    m = detail_mask((8, 8), 2)
    assert m[:2, :2].sum() == 0 and m.sum() == 60
    # a constant image has no detail coefficients
    c = dwt2(torch.ones(1, 16, 16), 2, "db4")
    assert c[:, 4:, :].abs().max() < 1e-5 and c[:, :, 4:].abs().max() < 1e-5


def test_sizes_and_errors():
    assert pad_shape((230, 180), 4) == (240, 192)
    assert default_levels((640, 368)) == 5 and default_levels((20, 20)) == 1
    with pytest.raises(ValueError, match="divisible by 8"):
        dwt2(torch.zeros(1, 20, 16), 3)
    with pytest.raises(MrlearnError, match="unknown wavelet 'db9'"):
        dwt2(torch.zeros(1, 16, 16), 1, "db9")


@pytest.mark.parametrize("name", list(DAUBECHIES))
def test_one_level_equals_pywavelets_periodization_after_a_shift(name):
    """One level of ours on ``x`` rolled by ``N - 1`` samples per axis (``N`` vanishing moments: 1 pixel for db2,
    BART's dau2; none for Haar) equals PyWavelets' ``dwt2(x, mode="periodization")``; in-place layout
    ``[[cA, cV], [cH, cD]]`` (rows = the first axis)."""
    import pywt
    import numpy as np

    shift = int(name[2:]) - 1
    x = np.random.default_rng(0).standard_normal((32, 24))
    ca, (ch, cv, cd) = pywt.dwt2(x, name, mode="periodization")
    ours = dwt2(torch.from_numpy(np.roll(x, (shift, shift), axis=(0, 1))), 1, name).numpy()
    np.testing.assert_allclose(ours[:16, :12], ca, atol=1e-12)
    np.testing.assert_allclose(ours[16:, :12], ch, atol=1e-12)
    np.testing.assert_allclose(ours[:16, 12:], cv, atol=1e-12)
    np.testing.assert_allclose(ours[16:, 12:], cd, atol=1e-12)
    if shift:  # without the shift they differ: the offset is real, not a tolerance artefact
        assert not np.allclose(dwt2(torch.from_numpy(x), 1, name).numpy()[:16, :12], ca, atol=1e-3)
