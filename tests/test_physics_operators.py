"""Closed-form and adjointness checks of the Fourier and SENSE operators."""

import math

import numpy as np
import pytest
import torch

from mrlearn.physics.complex import channels_to_complex, complex_to_channels, crop_or_pad
from mrlearn.physics.fft import fft2c, ifft2c
from mrlearn.physics.sense import SenseOperator, rss, sense_normal


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


def _mask(kind, b, h, w, seed=4):
    """None, a column mask ``[B, 1, 1, W]`` or a 2-D mask ``[B, 1, H, W]`` (0/1), about half sampled."""
    g = torch.Generator().manual_seed(seed)
    shape = {"none": None, "1d": (b, 1, 1, w), "2d": (b, 1, h, w)}[kind]
    return None if shape is None else (torch.rand(*shape, generator=g) > 0.5).double()


def _tolerance(dtype, n, op_norm, x, y):
    """Round-off bound for ``<A x, y>`` vs ``<x, A^H y>``: each side is ``||A|| ||x|| ||y||`` at most and carries a
    relative error of a few ``eps`` per FFT stage (``log2 n`` of them) plus the map product, mask, coil sum and
    the pairwise-summed inner product; 10 covers those few roundings per stage."""
    eps = torch.finfo(dtype).eps
    return 10 * eps * math.log2(n) * op_norm * float(torch.linalg.vector_norm(x) * torch.linalg.vector_norm(y))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("coils", ["none", "ones", 4])
@pytest.mark.parametrize("mask_kind", ["none", "1d", "2d"])
def test_sense_operator_is_adjoint(dtype, coils, mask_kind):
    """<A x, y> == <x, A^H y> for multi-coil, single-coil (no maps, or one map of ones), 1-D and 2-D masks."""
    b, h, w = 2, 12, 10
    maps = {"none": None, "ones": torch.ones(b, 1, h, w, dtype=torch.complex128), 4: _crandn(b, 4, h, w, seed=2)}[coils]
    c = 1 if maps is None else maps.shape[1]
    x = _crandn(b, h, w, seed=1, dtype=dtype)
    y = _crandn(b, c, h, w, seed=3, dtype=dtype)
    mask = _mask(mask_kind, b, h, w)
    op = SenseOperator(None if maps is None else maps.to(dtype), mask)
    ax, ahy = op.forward(x), op.adjoint(y)
    assert ax.shape == (b, c, h, w) and ahy.shape == (b, h, w) and ax.dtype == ahy.dtype == dtype
    op_norm = 1.0 if maps is None else float(rss(maps).max())  # ||A|| <= max over pixels of sqrt(sum_c |S_c|^2)
    tol = _tolerance(dtype, b * c * h * w, op_norm, x, y)
    assert abs(complex(_inner(ax, y) - _inner(x, ahy))) <= tol
    # the normal operator A^H A is self-adjoint and positive semi-definite
    z = _crandn(b, h, w, seed=5, dtype=dtype)
    tol_n = _tolerance(dtype, b * c * h * w, op_norm ** 2, x, z)
    assert abs(complex(_inner(op.normal(x), z) - _inner(x, op.normal(z)))) <= tol_n
    assert float(_inner(op.normal(x), x).real) >= -tol_n
    # the shift-free normal equals the composition (mask once: M^H M = M) to the rounding of a few FFT stages
    diff = torch.linalg.vector_norm(op.normal(x) - op.adjoint(op.forward(x)))
    eps = torch.finfo(dtype).eps
    assert float(diff) <= 10 * eps * math.log2(b * c * h * w) * op_norm ** 2 * float(torch.linalg.vector_norm(x))


def test_adjointness_check_can_fail():
    """The tolerance above is tight enough to see a wrong adjoint (a missing conjugate on the maps)."""
    b, c, h, w = 1, 3, 12, 10
    maps, x, y = _crandn(b, c, h, w, seed=2), _crandn(b, h, w, seed=1), _crandn(b, c, h, w, seed=3)
    op = SenseOperator(maps, _mask("1d", b, h, w))
    wrong = (maps * ifft2c(y * op.mask)).sum(-3)
    tol = _tolerance(torch.complex128, b * c * h * w, float(rss(maps).max()), x, y)
    assert abs(complex(_inner(op.forward(x), y) - _inner(x, wrong))) > 1e6 * tol


def test_single_coil_keeps_the_coil_axis_and_equals_maps_of_ones():
    b, h, w = 2, 8, 6
    x, mask = _crandn(b, h, w, seed=6), _mask("1d", b, h, w)
    ones = SenseOperator(torch.ones(b, 1, h, w, dtype=x.dtype), mask)
    none = SenseOperator(None, mask)
    assert none.coils == ones.coils == 1
    assert none.forward(x).shape == (b, 1, h, w)
    assert torch.equal(none.forward(x), ones.forward(x))
    assert torch.equal(none.adjoint(ones.forward(x)), ones.adjoint(ones.forward(x)))
    # single-coil k-space is the masked centred FFT of the image
    assert torch.equal(none.forward(x), fft2c(x)[:, None] * mask + 0.0)
    with pytest.raises(ValueError, match="single-coil"):
        none.adjoint(_crandn(b, 3, h, w, seed=7))  # several coils need maps


def test_sense_docstring_examples_run():
    import doctest

    import mrlearn.physics.sense as sense

    result = doctest.testmod(sense, verbose=False)
    assert result.attempted >= 4 and result.failed == 0


def test_sense_identity_for_normalised_maps_full_sampling():
    maps = _crandn(1, 3, 8, 8, seed=5)
    maps = maps / rss(maps).unsqueeze(-3)  # sum_c |S_c|^2 = 1
    m = _crandn(1, 8, 8, seed=6)
    assert torch.allclose(sense_normal(m, maps, None), m, atol=1e-12)


def test_masked_entries_have_no_negative_zero():
    k = _crandn(1, 2, 4, 4, seed=7) * -1
    mask = torch.zeros(1, 1, 1, 4, dtype=torch.float64)
    out = SenseOperator(None, mask).forward(ifft2c(k)[:, 0])
    assert not torch.signbit(out.real).any() and not torch.signbit(out.imag).any()


def test_complex_channel_roundtrip_and_crop_pad():
    x = _crandn(2, 5, 7, dtype=torch.complex64)
    c = complex_to_channels(x)
    assert c.shape == (2, 2, 5, 7) and torch.equal(channels_to_complex(c), x)
    assert crop_or_pad(x, (4, 9)).shape == (2, 4, 9)
    # fastMRI's placement: crop from (H - h) // 2, pad to (H - h) // 2 (the exact inverse of the crop)
    y = torch.zeros(9, 9)
    y[4, 4] = 1
    assert crop_or_pad(y, (6, 12))[3, 5] == 1 and crop_or_pad(y, (5, 5))[2, 2] == 1
    z = torch.arange(10.0 * 8).reshape(10, 8)
    assert torch.equal(crop_or_pad(z, (5, 8))[0], z[2])  # H even, h odd: rows 2..6 (fastMRI), not 3..7
    assert torch.equal(crop_or_pad(crop_or_pad(y, (12, 13)), (9, 9)), y)
