"""Simulated coil sensitivities (mrlearn.physics.coils)."""

from __future__ import annotations

import numpy as np
import pytest

from mrlearn.errors import MrlearnError
from mrlearn.physics.coils import object_region, simulate_coil_maps

SHAPE, PIXEL = (64, 56), 3.75


def _rss(maps: np.ndarray) -> np.ndarray:
    return np.sqrt((np.abs(maps) ** 2).sum(axis=-3))


def test_shape_dtype_and_determinism():
    a = simulate_coil_maps(SHAPE, 8, pixel_mm=PIXEL, rng=3)
    b = simulate_coil_maps(SHAPE, 8, pixel_mm=PIXEL, rng=np.random.default_rng(3))
    c = simulate_coil_maps(SHAPE, 8, pixel_mm=PIXEL, rng=4)
    assert a.shape == (8, *SHAPE) and a.dtype == np.complex64
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1  # another seed moves the coils


def test_mean_normalisation_and_coverage():
    maps = simulate_coil_maps(SHAPE, 8, pixel_mm=PIXEL, rng=0)
    region = object_region(SHAPE, PIXEL)
    rss = _rss(maps)
    assert rss[region].mean() == pytest.approx(1.0, rel=1e-5)
    # the whole object is covered: the weakest point (the centre) still sees a fair share of the brightest
    assert rss[region].min() > 0.15 * rss[region].max()
    # the centre is darker than the rim (surface coils), as for a real head array
    assert rss[SHAPE[0] // 2, SHAPE[1] // 2] < 0.7 * rss[region].max()


def test_rss_normalisation_is_exact():
    maps = simulate_coil_maps(SHAPE, 12, pixel_mm=PIXEL, rng=1, normalize="rss")
    np.testing.assert_allclose(_rss(maps), 1.0, rtol=1e-5)


def test_maps_are_smooth():
    maps = simulate_coil_maps(SHAPE, 8, pixel_mm=PIXEL, rng=2)
    region = object_region(SHAPE, PIXEL)[1:-1, 1:-1]
    lap = (maps[:, 2:, 1:-1] + maps[:, :-2, 1:-1] + maps[:, 1:-1, 2:] + maps[:, 1:-1, :-2] - 4 * maps[:, 1:-1, 1:-1])
    rel = np.linalg.norm(lap[:, region]) / np.linalg.norm(maps[:, 1:-1, 1:-1][:, region])
    assert rel < 0.05, rel
    # a map with pixel-scale structure would fail the same measure
    noisy = maps + 0.1 * np.random.default_rng(0).standard_normal(maps.shape)
    lap_n = (noisy[:, 2:, 1:-1] + noisy[:, :-2, 1:-1] + noisy[:, 1:-1, 2:] + noisy[:, 1:-1, :-2] - 4 * noisy[:, 1:-1, 1:-1])
    assert np.linalg.norm(lap_n[:, region]) / np.linalg.norm(noisy[:, 1:-1, 1:-1][:, region]) > 0.2


def test_each_coil_peaks_at_the_rim_and_coils_spread_around():
    n = 8
    maps = simulate_coil_maps(SHAPE, n, pixel_mm=PIXEL, rng=5)
    h, w = SHAPE
    angles = []
    for c in range(n):
        i, j = np.unravel_index(np.abs(maps[c]).argmax(), SHAPE)
        y, x = (i - h // 2) / (h / 2), (j - w // 2) / (w / 2)
        assert np.hypot(y, x) > 0.8  # the loop sits outside the object: peak at the edge of the FOV
        angles.append(np.arctan2(x, y))
    gaps = np.diff(np.sort(np.mod(angles, 2 * np.pi)))
    assert gaps.max() < 2 * (2 * np.pi / n)


def test_slab_maps_vary_slowly_along_z():
    z = np.arange(-3, 4) * 2.0
    maps = simulate_coil_maps(SHAPE, 6, pixel_mm=PIXEL, rng=7, z_mm=z)
    assert maps.shape == (7, 6, *SHAPE)
    step = np.linalg.norm(maps[1:] - maps[:-1]) / np.linalg.norm(maps)
    assert 0 < step < 0.05


def test_single_coil_and_bad_input():
    one = simulate_coil_maps(SHAPE, 1, pixel_mm=PIXEL, rng=0)
    assert one.shape == (1, *SHAPE) and np.isfinite(one).all()
    for kwargs in ({"n_coils": 0}, {"n_coils": 2.5}, {"shape": (1, 8)}, {"normalize": "max"}, {"pixel_mm": 0.0}):
        args = {"shape": SHAPE, "n_coils": 4, "pixel_mm": PIXEL, **kwargs}
        with pytest.raises(MrlearnError) as exc:
            simulate_coil_maps(args.pop("shape"), args.pop("n_coils"), **args)
        assert "\n" not in str(exc.value)
