"""Closed-form and adjointness checks of the Fourier and SENSE operators."""

import numpy as np
import pytest
import torch

from mrlearn.physics.complex import channels_to_complex, complex_to_channels, crop_or_pad
from mrlearn.physics.fft import fft2c, ifft2c
from mrlearn.physics.sense import rss, sense_adjoint, sense_forward, sense_normal


def _crandn(*shape, seed=0, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64),
                         torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


def _inner(a, b):
    return torch.sum(a * b.conj())


@pytest.mark.parametrize("shape", [(8, 8), (7, 10), (3, 9, 6)])
def test_fft2c_matches_numpy_reference_and_is_unitary(shape):
    x = _crandn(*shape)
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(fft2c(x).numpy(), ref, atol=1e-12)
    assert torch.allclose(ifft2c(fft2c(x)), x, atol=1e-12)
    assert torch.allclose(torch.linalg.vector_norm(fft2c(x)), torch.linalg.vector_norm(x))


def test_fft2c_of_centered_delta_is_flat():
    x = torch.zeros(6, 5, dtype=torch.complex128)
    x[3, 2] = 1.0
    k = fft2c(x)
    assert torch.allclose(k, torch.full_like(k, 1 / np.sqrt(30)))


@pytest.mark.parametrize("coils", [None, 4])
@pytest.mark.parametrize("mask_kind", ["none", "columns", "2d"])
def test_sense_adjointness(coils, mask_kind):
    b, h, w = 2, 12, 10
    m = _crandn(b, h, w, seed=1)
    maps = None if coils is None else _crandn(b, coils, h, w, seed=2)
    y = _crandn(b, h, w, seed=3) if coils is None else _crandn(b, coils, h, w, seed=3)
    g = torch.Generator().manual_seed(4)
    mask = {"none": None,
            "columns": (torch.rand(b, 1, 1, w, generator=g) > 0.5).double() if coils else (torch.rand(b, 1, w, generator=g) > 0.5).double(),
            "2d": (torch.rand(b, 1, h, w, generator=g) > 0.5).double() if coils else (torch.rand(b, h, w, generator=g) > 0.5).double()}[mask_kind]
    lhs = _inner(sense_forward(m, maps, mask), y)
    rhs = _inner(m, sense_adjoint(y, maps, mask))
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10)
    # the normal operator is self-adjoint and positive semi-definite
    n = sense_normal(m, maps, mask)
    assert _inner(n, m).real >= -1e-10
    assert torch.allclose(_inner(n, y[:, 0] if coils else y), _inner(m, sense_normal(y[:, 0] if coils else y, maps, mask)), atol=1e-9)


def test_sense_identity_for_normalised_maps_full_sampling():
    maps = _crandn(1, 3, 8, 8, seed=5)
    maps = maps / rss(maps).unsqueeze(-3)  # sum_c |S_c|^2 = 1
    m = _crandn(1, 8, 8, seed=6)
    assert torch.allclose(sense_normal(m, maps, None), m, atol=1e-12)


def test_masked_entries_have_no_negative_zero():
    k = _crandn(1, 2, 4, 4, seed=7) * -1
    mask = torch.zeros(1, 1, 1, 4, dtype=torch.float64)
    out = sense_forward(ifft2c(k)[:, 0], None, mask[:, 0])
    assert not torch.signbit(out.real).any() and not torch.signbit(out.imag).any()


def test_complex_channel_roundtrip_and_crop_pad():
    x = _crandn(2, 5, 7, dtype=torch.complex64)
    c = complex_to_channels(x)
    assert c.shape == (2, 2, 5, 7) and torch.equal(channels_to_complex(c), x)
    assert crop_or_pad(x, (4, 9)).shape == (2, 4, 9)
    # the centre pixel stays the centre pixel through crop and pad
    y = torch.zeros(9, 9)
    y[4, 4] = 1
    assert crop_or_pad(y, (6, 12))[3, 6] == 1 and crop_or_pad(y, (5, 5))[2, 2] == 1
