"""The shift-free centred FFTs (checkerboard modulation) against the roll form and numpy, and the SENSE operator
with the modulation folded into its mask / coil-sum products against the shifted definitions."""

import numpy as np
import pytest
import torch

from mrlearn.models.sens_refine import acs_coil_images, acs_mask
from mrlearn.physics.fft import centring, fft2c, ifft2c
from mrlearn.physics.sense import apply_mask, masked_ifft2c, sense_adjoint, sense_forward

AXES = (-2, -1)


def _crandn(*shape, seed=0, dtype=torch.complex64):
    g = torch.Generator().manual_seed(seed)
    x = torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64), torch.randn(*shape, generator=g, dtype=torch.float64))
    return x.to(dtype)


def roll_fft2c(x):
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=AXES), norm="ortho"), dim=AXES)


def roll_ifft2c(x):
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(x, dim=AXES), norm="ortho"), dim=AXES)


def _close(a, b, dtype):
    """Agreement to the FFT's rounding: float32 ~1e-6 of the largest entry, float64 ~1e-14."""
    tol = 2e-6 if dtype == torch.complex64 else 1e-13
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max()) / scale


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 16, 10), (1, 2, 12, 6), (2, 20, 14), (5, 7), (2, 9, 8), (2, 8, 9),
                                   (3, 2, 7, 11)])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_centred_ffts_equal_roll_form_and_numpy(shape, dtype):
    x = _crandn(*shape, dtype=dtype)
    _close(fft2c(x), roll_fft2c(x), dtype)
    _close(ifft2c(x), roll_ifft2c(x), dtype)
    xn = x.numpy()
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(xn, axes=AXES), norm="ortho"), axes=AXES)
    iref = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(xn, axes=AXES), norm="ortho"), axes=AXES)
    _close(fft2c(x), torch.from_numpy(ref), dtype)
    _close(ifft2c(x), torch.from_numpy(iref), dtype)


@pytest.mark.parametrize("h, w", [(4, 4), (4, 6), (6, 6), (2, 8), (6, 10)])
def test_checkerboard_sign_follows_half_sizes(h, w):
    """``post = (-1)^(H/2 + W/2) pre`` with ``pre = (-1)^(n1 + n2)``: both parities of ``H/2 + W/2`` are covered,
    and a wrong global sign makes the centred delta's spectrum -1/sqrt(N) instead of +1/sqrt(N)."""
    pre, post = centring((h, w), torch.float64, "cpu")
    n = torch.arange(h)[:, None] + torch.arange(w)[None, :]
    assert torch.equal(pre, (-1.0) ** n.double())
    assert torch.equal(post, (-1.0) ** (h // 2 + w // 2) * pre)
    delta = torch.zeros(h, w, dtype=torch.complex128)
    delta[h // 2, w // 2] = 1.0
    assert torch.allclose(fft2c(delta), torch.full((h, w), (h * w) ** -0.5, dtype=torch.complex128), atol=1e-15)


def test_odd_sizes_keep_the_roll_form():
    assert centring((5, 8), torch.float32, "cpu") is None and centring((8, 5), torch.float32, "cpu") is None
    x = _crandn(2, 7, 9)
    assert torch.equal(fft2c(x), roll_fft2c(x)) and torch.equal(ifft2c(x), roll_ifft2c(x))


def test_gradients_match_roll_form():
    x = _crandn(2, 3, 8, 6, dtype=torch.complex128).requires_grad_(True)
    g = _crandn(2, 3, 8, 6, seed=1, dtype=torch.complex128)
    for fast, slow in ((fft2c, roll_fft2c), (ifft2c, roll_ifft2c)):
        (a,) = torch.autograd.grad(fast(x), x, g)
        (b,) = torch.autograd.grad(slow(x), x, g)
        _close(a, b, torch.complex128)


def _reference_forward(image, maps, mask):
    coil = image.unsqueeze(-3) if maps is None else maps * image.unsqueeze(-3)
    return apply_mask(roll_fft2c(coil), mask)


def _reference_adjoint(kspace, maps, mask):
    coil = roll_ifft2c(apply_mask(kspace, mask))
    return coil.squeeze(-3) if maps is None else (maps.conj() * coil).sum(-3)


@pytest.mark.parametrize("hw", [(12, 10), (9, 10), (12, 7)])
@pytest.mark.parametrize("mask_kind", ["none", "columns", "2d"])
@pytest.mark.parametrize("coils", [None, 4])
def test_sense_forward_adjoint_equal_shifted_definitions(hw, mask_kind, coils):
    h, w = hw
    g = torch.Generator().manual_seed(3)
    mask = {"none": None, "columns": (torch.rand(2, 1, 1, w, generator=g) > 0.5).float(),
            "2d": (torch.rand(2, 1, h, w, generator=g) > 0.5).float()}[mask_kind]
    maps = None if coils is None else _crandn(2, coils, h, w, seed=5)
    image = _crandn(2, h, w, seed=6)
    kspace = _crandn(2, coils or 1, h, w, seed=7)
    _close(sense_forward(image, maps, mask), _reference_forward(image, maps, mask), torch.complex64)
    _close(sense_adjoint(kspace, maps, mask), _reference_adjoint(kspace, maps, mask), torch.complex64)
    _close(masked_ifft2c(kspace, mask), roll_ifft2c(apply_mask(kspace, mask)), torch.complex64)
    if mask is not None:  # unsampled entries stay exactly +0 (no negative zero from the -1 of the checkerboard)
        out = sense_forward(image, maps, mask)
        zero = torch.broadcast_to(mask == 0, out.shape)
        assert not torch.signbit(torch.view_as_real(out[zero])).any()


def test_acs_coil_images_equal_shifted_definition():
    h, w = 16, 12
    mask = torch.zeros(2, 1, 1, w)
    mask[..., 4:8] = 1
    mask[0, ..., 1] = 1
    kspace = _crandn(2, 3, h, w, seed=8) * mask
    ref = roll_ifft2c(kspace * acs_mask(mask, (h, w)))
    _close(acs_coil_images(kspace, mask), ref, torch.complex64)
