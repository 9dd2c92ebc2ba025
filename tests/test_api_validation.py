"""The Python API checks its inputs like the CLI: one validation layer, one-line errors, never NaN in -> NaN out."""

from __future__ import annotations

import numpy as np
import pytest

import mrlearn
from mrlearn.errors import MrlearnError


def _kspace(coils: int = 2, h: int = 16, w: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.complex64)
    img[4:12, 5:11] = 1.0
    maps = (rng.random((coils, 1, 1)) + 0.5).astype(np.complex64)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img * maps, axes=(-2, -1)), norm="ortho"),
                           axes=(-2, -1)).astype(np.complex64)


def _bad(fragment: str, *args, **kwargs) -> str:
    with pytest.raises(MrlearnError) as exc:
        mrlearn.reconstruct(*args, **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg and fragment in msg, msg
    return msg


K = _kspace()
MAPS = np.ones_like(K) / np.sqrt(2)


@pytest.mark.parametrize("value, fragment", [
    (np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"), (0.0, "all zero"),
])
def test_kspace_values(value, fragment):
    k = K.copy() * 0 + value if value == 0 else K.copy()
    if value != 0:
        k[0, 3, 3] = value
    _bad(fragment, k, method="zero-filled")


def test_tiny_kspace_is_not_called_all_zero():
    _bad("too small for float32", K * 1e-25, method="zero-filled")


@pytest.mark.parametrize("mask, fragment", [
    (np.full(16, np.nan), "NaN or Inf"), (np.zeros(16), "samples nothing"),
    (np.where(np.arange(16) % 2, 0.5, 0.0), "not binary (holds 0.5)"), (np.where(np.arange(16) % 2, 2.0, 0.0), "not binary"),
])
def test_mask_values(mask, fragment):
    _bad(fragment, K, mask, "zero-filled")


@pytest.mark.parametrize("maps, fragment", [
    (np.full_like(MAPS, np.nan), "NaN or Inf"), (np.zeros_like(MAPS), "zero everywhere"),
])
def test_sens_map_values(maps, fragment):
    _bad(fragment, K, np.ones(16), "cg-sense", maps)


@pytest.mark.parametrize("options, fragment", [
    ({"lam": float("nan")}, "options.lam: nan is not a number"), ({"lam": -1.0}, "options.lam: -1.0"),
    ({"max_iter": 0}, "options.max_iter: 0 is not an integer"), ({"max_iter": -5}, "max_iter"),
    ({"tol": float("inf")}, "options.tol"), ({"recon_size": (0, 0)}, "does not fit the k-space matrix"),
    ({"recon_size": (64, 64)}, "does not fit the k-space matrix 16 x 16"), ({"recon_size": "big"}, "not two integers"),
])
def test_option_values(options, fragment):
    _bad(fragment, K, np.ones(16), "cg-sense", MAPS, **options)


def test_cli_set_uses_the_same_ranges(tmp_path, capsys):
    from helpers_data import write_test_volume
    from mrlearn.cli import main

    write_test_volume(tmp_path / "v.h5", slices=1, coils=2, h=16, w=16)
    assert main(["reconstruct", "--method", "cg-sense", "--data", str(tmp_path / "v.h5"), "--out", str(tmp_path / "o"),
                 "--set", "lam=-1"]) == 2
    err = capsys.readouterr().err
    assert "--set.lam: -1 is not a number in [0, 1e+06]" in err and err.count("\n") == 1


def test_good_inputs_still_reconstruct():
    out = mrlearn.reconstruct(K, np.ones(16), "cg-sense", MAPS, lam=0.0, max_iter=5, recon_size=(8, 8))
    assert out.shape == (8, 8) and np.isfinite(out).all()
    assert mrlearn.reconstruct(K, (np.arange(16) % 2 == 0) | (abs(np.arange(16) - 8) < 3), "zero-filled").shape == (16, 16)


@pytest.mark.parametrize("seed", range(30))
def test_random_bad_inputs_never_give_nan(seed):
    """A property check: random corruptions of good inputs either reconstruct to finite images or are refused."""
    rng = np.random.default_rng(seed)
    k, mask, maps = K.copy(), np.ones(16), MAPS.copy()
    choice = rng.integers(6)
    if choice == 0:
        k.flat[rng.integers(k.size)] = rng.choice([np.nan, np.inf, -np.inf])
    elif choice == 1:
        mask = rng.choice([0.0, 1.0, 0.5, np.nan], size=16)
    elif choice == 2:
        maps.flat[rng.integers(maps.size)] = np.nan
    elif choice == 3:
        k *= rng.choice([0.0, 1e-30, 1e30])
    elif choice == 4:
        maps *= 0
    options = {"lam": float(rng.choice([0.01, -0.1, np.nan])), "max_iter": int(rng.choice([5, 0]))}
    try:
        out = mrlearn.reconstruct(k, mask, "cg-sense", maps, **options)
    except MrlearnError as exc:
        assert "\n" not in str(exc)
        return
    assert np.isfinite(out).all()
