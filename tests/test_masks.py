"""Undersampling masks: fastMRI column masks, equispaced variants, Poisson disc, seeding, padding, errors."""

import subprocess
import sys

import numpy as np
import pytest

from mrlearn.errors import MrlearnError
from mrlearn.physics.masks import (
    EquispacedFractionMaskFunc,
    EquispacedMaskFunc,
    PoissonDiscMaskFunc,
    RandomMaskFunc,
    achieved_acceleration,
    build_mask_func,
    calibration_slices,
    center_columns,
    fixed_mask,
    poisson_disc,
    seed_from_name,
)


@pytest.mark.parametrize("kind", ["random", "equispaced", "equispaced_fraction"])
@pytest.mark.parametrize("width,cf", [(368, 0.08), (181, 0.04), (32, 0.125)])
def test_column_masks_keep_exact_centre_block(kind, width, cf):
    f = build_mask_func(kind, [4], [cf])
    rng = np.random.default_rng(1)
    for _ in range(5):
        m = f((640, width), rng)
        assert m.shape == (1, width) and m.dtype == np.float32
        assert set(np.unique(m)) <= {0.0, 1.0}
        n_low = round(width * cf)
        assert f.acs == n_low
        start = (width - n_low + 1) // 2  # fastMRI placement; the DC column width // 2 is inside
        assert start <= width // 2 < start + n_low
        assert np.all(m[0, start:start + n_low] == 1)
        np.testing.assert_array_equal(center_columns(width, n_low).nonzero()[0], np.arange(start, start + n_low))


@pytest.mark.parametrize("width,cf,accel", [(368, 0.08, 4), (320, 0.04, 8), (173, 0.04, 4)])
def test_random_mask_probability_gives_r_in_expectation(width, cf, accel):
    f = RandomMaskFunc([accel], [cf])
    rng = np.random.default_rng(0)
    counts = np.array([f((1, width), rng).sum() for _ in range(3000)])
    # E[count] = n_low + (W - n_low) p = W / R exactly; the empirical mean is within a few standard errors.
    assert counts.mean() == pytest.approx(width / accel, rel=0.01)
    # and the per-draw acceleration averages to R within a few %
    accs = width / counts
    assert accs.mean() == pytest.approx(accel, rel=0.04)


def test_random_mask_reproduces_fastmri_rule_on_a_given_stream():
    """Same random numbers -> same columns as the fastMRI rule written out independently."""
    width, cf, accel = 100, 0.08, 4
    m = RandomMaskFunc([accel], [cf])((10, width), np.random.default_rng(5))[0]
    u = np.random.default_rng(5).uniform(size=width)  # single pair: no choice is drawn first
    n_low = 8
    prob = (width / accel - n_low) / (width - n_low)
    expect = u < prob
    expect[(width - n_low + 1) // 2:(width - n_low + 1) // 2 + n_low] = True
    np.testing.assert_array_equal(m.astype(bool), expect)


def test_equispaced_plain_spacing_and_undershoot():
    f = EquispacedMaskFunc([4], [0.08])
    m = f((1, 368), np.random.default_rng(3))[0].astype(bool)
    centre = center_columns(368, round(368 * 0.08))
    outside = np.flatnonzero(m & ~centre)
    assert np.all(np.diff(outside) % 4 == 0)  # every 4th column
    assert m.sum() > 368 / 4  # the plain variant samples more than W / R


@pytest.mark.parametrize("width,accel,cf", [(368, 4, 0.08), (320, 8, 0.04), (640, 4, 0.04), (181, 3, 0.1)])
def test_equispaced_fraction_hits_r_exactly(width, accel, cf):
    f = EquispacedFractionMaskFunc([accel], [cf])
    rng = np.random.default_rng(2)
    for _ in range(10):
        m = f((1, width), rng)
        assert int(m.sum()) == round(width / accel)
        if width % accel == 0:
            assert achieved_acceleration(m, (7, width)) == accel
        # spacing among non-centre columns is uniform up to rounding
        free = np.flatnonzero(~center_columns(width, round(width * cf)))
        picked = np.flatnonzero(np.isin(free, np.flatnonzero(m[0])))
        steps = np.diff(picked)
        assert steps.max() - steps.min() <= 1


def test_several_pairs_are_drawn_uniformly():
    f = RandomMaskFunc([4, 8], [0.08, 0.04])
    rng = np.random.default_rng(0)
    acs = [f.sample((1, 400), rng).acs for _ in range(400)]
    frac = np.mean(np.array(acs) == 32)
    assert set(acs) == {32, 16}
    assert 0.4 < frac < 0.6


def test_same_seed_same_mask_and_fixed_mask_depends_only_on_name(tmp_path):
    for f in (RandomMaskFunc([4], [0.08]), build_mask_func("equispaced_fraction", [8], [0.04]),
              PoissonDiscMaskFunc([4], calib=(8, 8))):
        shape = (48, 40)
        a = f(shape, np.random.default_rng(123))
        f(shape, np.random.default_rng(9))  # draws in between must not matter
        b = f(shape, np.random.default_rng(123))
        c = type(f)(f.accelerations, **({"calib": (8, 8)} if isinstance(f, PoissonDiscMaskFunc) else
                                          {"center_fractions": f.center_fractions}))(shape, np.random.default_rng(123))
        np.testing.assert_array_equal(a, c)  # a fresh object (another process) gives the same mask
        np.testing.assert_array_equal(a, b)
        m1 = fixed_mask(f, shape, "file1000001.h5")
        m2 = fixed_mask(f, shape, str(tmp_path / "other" / "file1000001.h5"))
        m3 = fixed_mask(f, shape, "file1000002.h5")
        np.testing.assert_array_equal(m1, m2)
        assert not np.array_equal(m1, m3)


def test_seed_from_name_is_stable_across_processes():
    code = "from mrlearn.physics.masks import seed_from_name; print(seed_from_name('file_brain_AXT2_200_2000019.h5', 3))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert int(out) == seed_from_name("file_brain_AXT2_200_2000019.h5", 3)
    # pinned value: the seed must not change between releases (hashlib, not hash())
    assert seed_from_name("file1000001.h5") == 4083396616029314700
    assert seed_from_name("file1000001.h5") == seed_from_name("/any/folder/file1000001.h5")
    assert seed_from_name("a.h5") != seed_from_name("a.h5", 1)
    assert 0 <= seed_from_name("a.h5") < 2**63


def test_padding_zeroes_columns_outside_acquired_range():
    f = RandomMaskFunc([1], [0.08])  # R = 1: every column sampled
    m = f((10, 372), np.random.default_rng(0), padding=(4, 368))
    assert np.all(m[0, :4] == 0) and np.all(m[0, 368:] == 0) and np.all(m[0, 4:368] == 1)
    assert achieved_acceleration(m, (10, 372), padding=(4, 368)) == 1.0
    with pytest.raises(MrlearnError, match="padding"):
        f((10, 372), np.random.default_rng(0), padding=(10, 400))


def test_achieved_acceleration_closed_form():
    m = np.zeros((1, 10), np.float32)
    m[0, ::2] = 1
    assert achieved_acceleration(m, (6, 10)) == 2.0
    m2 = np.zeros((4, 5), np.float32)
    m2[0, :] = 1
    assert achieved_acceleration(m2, (4, 5)) == 4.0
    assert achieved_acceleration(np.zeros((1, 5)), (2, 5)) == np.inf
    with pytest.raises(MrlearnError, match="does not fit"):
        achieved_acceleration(np.ones((1, 7)), (4, 5))


@pytest.mark.parametrize("shape,accel,calib", [((64, 64), 4, (16, 16)), ((72, 57), 3, (12, 10)), ((96, 80), 6, (16, 16))])
def test_poisson_reaches_r_with_full_calibration_box(shape, accel, calib):
    f = build_mask_func("poisson", [accel], calib=calib)
    rng = np.random.default_rng(7)
    for _ in range(2):
        m = f(shape, rng)
        assert m.shape == shape and m.dtype == np.float32
        assert f.acs == calib
        r = achieved_acceleration(m, shape)
        assert abs(r - accel) <= 0.1 * accel
        rows, cols = calibration_slices(shape, calib)
        assert np.all(m[rows, cols] == 1)
        assert m[shape[0] // 2, shape[1] // 2] == 1  # DC inside the box
        # variable density: the inner quarter is sampled more densely than the outside
        h, w = shape
        inner = m[h // 4:3 * h // 4, w // 4:3 * w // 4].mean()
        assert inner > 1.2 * (m.sum() - m[h // 4:3 * h // 4, w // 4:3 * w // 4].sum()) / (m.size - (h // 2) * (w // 2))


def test_poisson_disc_min_distance_property():
    h, w, scale, vd = 60, 50, 3.0, 1.0
    m = poisson_disc(h, w, scale, (8, 8), vd, np.random.default_rng(4))
    ys, xs = np.nonzero(m)
    rows, cols = calibration_slices((h, w), (8, 8))
    outside = ~((ys >= rows.start) & (ys < rows.stop) & (xs >= cols.start) & (xs < cols.stop))
    d = np.hypot((ys - h // 2) / (h / 2), (xs - w // 2) / (w / 2))
    r = 1 + scale * d**vd
    dist = np.hypot(ys[:, None] - ys[None, :], xs[:, None] - xs[None, :])
    need = np.minimum(r[:, None], r[None, :])
    pair = outside[:, None] | outside[None, :]
    np.fill_diagonal(pair, False)
    assert np.all(dist[pair] >= need[pair] - 1e-9)
    # Bridson is maximal up to its candidate budget: few free pixels remain beyond the radius of every sample
    assert m.mean() > 0.05


def test_poisson_unreachable_and_bad_options_raise():
    with pytest.raises(MrlearnError, match="cannot reach"):
        build_mask_func("poisson", [2], calib=(16, 16))((64, 64), np.random.default_rng(0))
    with pytest.raises(MrlearnError, match="calibration box"):
        build_mask_func("poisson", [8], calib=(16, 16))((32, 32), np.random.default_rng(0))
    with pytest.raises(MrlearnError, match="larger than"):
        build_mask_func("poisson", [4], calib=(40, 8))((32, 32), np.random.default_rng(0))
    with pytest.raises(MrlearnError, match="do not apply"):
        build_mask_func("poisson", [4], [0.08])


@pytest.mark.parametrize("args,match", [
    (("spiral", [4], [0.08]), "unknown mask type"),
    (("random", [4, 8], [0.08]), "one centre fraction per acceleration"),
    (("random", [0.5], [0.08]), "below 1"),
    (("random", [], []), "no acceleration"),
    (("random", [4], [1.5]), "outside"),
    (("random", [4], None), "missing"),
    (("random", ["x"], [0.1]), "not a list of numbers"),
])
def test_build_mask_func_errors_are_one_line(args, match):
    with pytest.raises(MrlearnError, match=match) as exc:
        build_mask_func(*args)
    assert "\n" not in str(exc.value)


def test_centre_too_large_for_acceleration_raises():
    f = RandomMaskFunc([8], [0.2])
    with pytest.raises(MrlearnError, match="exceed"):
        f((1, 100), np.random.default_rng(0))
