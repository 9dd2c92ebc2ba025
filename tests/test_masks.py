"""Undersampling masks: the call protocol (shapes, seeding, no mutation), column-mask statistics, Poisson disc.

Identity with fastMRI's masks for the same seed is tested in ``test_fastmri_parity.py``.
"""

import numpy as np
import pytest
import torch

from mrlearn import registry
from mrlearn.errors import MrlearnError
from mrlearn.physics.masks import (
    EquispacedMaskFractionFunc,
    EquiSpacedMaskFunc,
    PoissonDiscMaskFunc,
    RandomMaskFunc,
    achieved_acceleration,
    calibration_slices,
    center_columns,
    file_seed,
    poisson_disc,
    seed_from_name,
)

COLUMN_CLASSES = [RandomMaskFunc, EquiSpacedMaskFunc, EquispacedMaskFractionFunc]


@pytest.mark.parametrize("cls", COLUMN_CLASSES)
@pytest.mark.parametrize("width,cf", [(368, 0.08), (181, 0.04), (32, 0.125)])
def test_column_masks_keep_exact_centre_block(cls, width, cf):
    f = cls([cf], [4])
    for seed in range(5):
        m, n_low = f((640, width), seed=seed)
        assert isinstance(m, torch.Tensor) and m.dtype == torch.float32 and m.shape == (1, width)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert n_low == round(width * cf)
        start = (width - n_low + 1) // 2  # fastMRI placement; the DC column width // 2 is inside
        assert start <= width // 2 < start + n_low
        assert torch.all(m[0, start:start + n_low] == 1)
        np.testing.assert_array_equal(center_columns(width, n_low).nonzero()[0], np.arange(start, start + n_low))


@pytest.mark.parametrize("shape,expect", [((640, 368), (1, 368)), ((15, 640, 368), (1, 1, 368)),
                                          ((1, 640, 368, 2), (1, 1, 368, 1)),
                                          ((4, 15, 640, 368, 2), (1, 1, 1, 368, 1))])
def test_layouts_fastmri_and_mrlearn_forms(shape, expect):
    m, _ = RandomMaskFunc([0.08], [4])(shape, seed=3)
    assert tuple(m.shape) == expect
    spatial = (64, 48, 2) if shape[-1] == 2 else (64, 48)
    lead = shape[:-3] if shape[-1] == 2 else shape[:-2]
    p, box = PoissonDiscMaskFunc([4], calib=(8, 8))(lead + spatial, seed=3)
    assert box == (8, 8)
    assert tuple(p.shape) == (1,) * len(lead) + ((64, 48, 1) if shape[-1] == 2 else (64, 48))
    # the same draw whatever the layout
    a = RandomMaskFunc([0.08], [4])((640, 368), seed=3)[0].reshape(-1)
    b = RandomMaskFunc([0.08], [4])((2, 640, 368, 2), seed=3)[0].reshape(-1)
    assert torch.equal(a, b)


def test_a_seeded_call_does_not_change_the_object_and_unseeded_calls_advance_its_generator():
    f = RandomMaskFunc([0.08, 0.04], [4, 8], seed=7)
    state = f.rng.get_state()[1].copy()
    attrs = dict(vars(f))
    m1 = f((1, 368), seed=(1, 2, 3))
    m2 = f((1, 368), seed=(1, 2, 3))
    assert torch.equal(m1[0], m2[0]) and m1[1] == m2[1]
    np.testing.assert_array_equal(f.rng.get_state()[1], state)  # seeded calls leave the generator alone
    assert vars(f).keys() == attrs.keys()
    assert all(vars(f)[k] is attrs[k] for k in attrs)  # no attribute replaced (no per-draw state)
    # seed=None draws from RandomState(7), advancing it: a fresh object repeats the sequence
    first = [f((1, 368))[0] for _ in range(3)]
    again = RandomMaskFunc([0.08, 0.04], [4, 8], seed=7)
    assert all(torch.equal(a, again((1, 368))[0]) for a in first)
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("width,cf,accel", [(368, 0.08, 4), (320, 0.04, 8), (173, 0.04, 4)])
def test_random_mask_probability_gives_r_in_expectation(width, cf, accel):
    f = RandomMaskFunc([cf], [accel], seed=0)
    counts = np.array([float(f((1, width))[0].sum()) for _ in range(3000)])
    # E[count] = n_low + (W - n_low) p = W / R exactly; the std error of the mean is below 0.2 % of W / R here
    assert counts.mean() == pytest.approx(width / accel, rel=0.01)


def test_equispaced_spacing_offset_and_undershoot():
    f = EquiSpacedMaskFunc([0.08], [4])
    m = f((1, 368), seed=3)[0][0].bool().numpy()
    outside = np.flatnonzero(m & ~center_columns(368, round(368 * 0.08)))
    assert np.all(np.diff(outside) % 4 == 0)  # every 4th column
    assert m.sum() > 368 / 4  # the plain variant samples more than W / R
    given = f((1, 368), offset=1, seed=3)[0][0].bool().numpy()
    assert np.all(given[1::4]) and not np.any(given[0::4] & ~center_columns(368, 29)[0::4])
    with pytest.raises(MrlearnError, match="integer accelerations"):
        EquiSpacedMaskFunc([0.08], [2.5])((1, 368), seed=0)


@pytest.mark.parametrize("width,accel,cf", [(368, 4, 0.08), (320, 8, 0.04), (640, 4, 0.04), (372, 4, 0.08)])
def test_equispaced_fraction_total_is_near_w_over_r(width, accel, cf):
    """Adjusted spacing a = R (n_low - W) / (n_low R - W): n_low + (W - n_low) / a = W / R columns, less overlap."""
    f = EquispacedMaskFractionFunc([cf], [accel])
    n_low = round(width * cf)
    a = accel * (n_low - width) / (n_low * accel - width)
    assert n_low + (width - n_low) / a == pytest.approx(width / accel)
    for seed in range(10):
        m = f((1, width), seed=seed)[0]
        lines = np.flatnonzero(m[0].numpy() * ~center_columns(width, n_low))
        for side in (lines[lines < width // 2], lines[lines > width // 2]):  # equally spaced up to rounding
            assert np.all(np.abs(np.diff(side) - a) <= 1 + 1e-9)
        # the arange may overlap the centre and stops before W - 1: at most a + 2 lines fewer than W / R
        assert width / accel - a - 2 <= float(m.sum()) <= width / accel + 1


def test_several_pairs_are_drawn_uniformly_and_any_combination():
    f = RandomMaskFunc([0.08, 0.04], [4, 8])
    lows = [f((1, 400), seed=s)[1] for s in range(400)]
    assert set(lows) == {32, 16} and 0.4 < np.mean(np.array(lows) == 32) < 0.6
    g = RandomMaskFunc([0.08, 0.04], [4, 8, 12], allow_any_combination=True)
    assert {g((1, 400), seed=s)[1] for s in range(50)} == {32, 16}


def test_file_seed_is_fastmri_rule_on_the_base_name():
    assert file_seed("file1000001.h5") == tuple(map(ord, "file1000001.h5"))
    assert file_seed("/any/folder/file1000001.h5") == file_seed("file1000001.h5")
    f = RandomMaskFunc([0.08], [4])
    a = f((640, 368), seed=file_seed("a/file1.h5"))[0]
    assert torch.equal(a, f((640, 368), seed=file_seed("b/file1.h5"))[0])
    assert not torch.equal(a, f((640, 368), seed=file_seed("file2.h5"))[0])
    # the integer name seed of SSDU splits (SHA-256 of the base name): fixed value, same in every folder
    assert seed_from_name("file1000001.h5") == 4083396616029314700 == seed_from_name("/x/file1000001.h5")
    assert seed_from_name("a.h5") != seed_from_name("a.h5", 1)


def test_registry_builds_the_classes_by_name():
    f = registry.build("mask", {"name": "random", "accelerations": [4], "center_fractions": [0.08]}, "mask")
    assert isinstance(f, RandomMaskFunc) and f.center_fractions == [0.08] and f.accelerations == [4.0]
    assert isinstance(registry.build("mask", {"name": "equispaced_fraction", "accelerations": [8],
                                              "center_fractions": [0.04]}, "mask"), EquispacedMaskFractionFunc)
    assert isinstance(registry.build("mask", {"name": "poisson", "accelerations": [4], "calib": [8, 8]}, "mask"),
                      PoissonDiscMaskFunc)
    with pytest.raises(MrlearnError, match="center_fractions"):
        registry.build("mask", {"name": "poisson", "accelerations": [4], "center_fractions": [0.08]}, "mask")


def test_achieved_acceleration_closed_form():
    m = np.zeros((1, 10), np.float32)
    m[0, :5] = 1
    assert achieved_acceleration(m, (6, 10)) == 2.0
    assert achieved_acceleration(m.reshape(1, 1, 10, 1), (6, 10)) == 2.0
    m2 = np.zeros((4, 5))
    m2[0, :5] = 1
    assert achieved_acceleration(m2, (4, 5)) == 4.0
    assert achieved_acceleration(np.zeros((1, 5)), (2, 5)) == np.inf
    assert achieved_acceleration(np.ones((1, 372)), (10, 372), padding=(4, 368)) == 1.0
    with pytest.raises(MrlearnError):
        achieved_acceleration(np.ones((1, 7)), (4, 5))


@pytest.mark.parametrize("shape,accel,calib", [((96, 80), 4, (16, 16)), ((64, 64), 3, (8, 8)), ((72, 57), 6, (12, 10))])
def test_poisson_reaches_r_and_keeps_calibration_box(shape, accel, calib):
    f = PoissonDiscMaskFunc([accel], calib=calib)
    for seed in range(3):
        m, box = f(shape, seed=seed)
        assert tuple(m.shape) == shape and box == calib
        assert abs(achieved_acceleration(m, shape) - accel) <= 0.02 * accel + 1e-9
        rows, cols = calibration_slices(shape, calib)
        assert torch.all(m[rows, cols] == 1)
        assert torch.equal(m, f(shape, seed=seed)[0])  # seeded: reproducible
    assert not torch.equal(f(shape, seed=0)[0], f(shape, seed=1)[0])


def test_poisson_disc_min_distance_property_and_variable_density():
    h, w, scale, vd = 80, 64, 3.0, 1.0
    m = poisson_disc(h, w, scale, (8, 8), vd, np.random.default_rng(4))
    rows, cols = calibration_slices((h, w), (8, 8))
    box = np.zeros_like(m)
    box[rows, cols] = True
    pts = np.argwhere(m & ~box)
    yy = (pts[:, 0] - h // 2) / (h / 2)
    xx = (pts[:, 1] - w // 2) / (w / 2)
    r = 1.0 + scale * np.hypot(yy, xx) ** vd
    d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert np.all(d >= np.minimum(r[:, None], r[None, :]) - 1e-9)  # no pair closer than the smaller radius
    # maximal: every unsampled pixel lies closer than the radius of some sample
    every = np.argwhere(m)
    ry = 1.0 + scale * np.hypot((every[:, 0] - h // 2) / (h / 2), (every[:, 1] - w // 2) / (w / 2)) ** vd
    empty = np.argwhere(~m)
    gap = np.hypot(*(empty[:, None, :] - every[None, :, :]).transpose(2, 0, 1))
    assert np.all((gap < ry[None, :]).any(axis=1))
    assert m[h // 2 - 6:h // 2 + 6, w // 2 - 6:w // 2 + 6].mean() > 2 * m[:10].mean()  # denser at the centre


def test_poisson_errors_are_one_line():
    with pytest.raises(MrlearnError, match="cannot reach acceleration"):
        PoissonDiscMaskFunc([2], calib=(16, 16))((64, 64), seed=0)
    with pytest.raises(MrlearnError, match="alone exceeds"):
        PoissonDiscMaskFunc([8], calib=(16, 16))((32, 32), seed=0)
    with pytest.raises(MrlearnError, match="larger than the k-space"):
        PoissonDiscMaskFunc([4], calib=(40, 8))((32, 32), seed=0)


@pytest.mark.parametrize("args,match", [
    (([4], [0.08]), "order is \\(center_fractions, accelerations\\)"),  # reversed arguments
    (([0.08], [0.5]), "below 1"),
    (([0.08, 0.04], [4]), "one per acceleration"),
    (("x", [4]), "not a list of numbers"),
    (([], [4]), "empty"),
])
def test_constructor_errors_are_one_line(args, match):
    with pytest.raises(MrlearnError, match=match) as exc:
        RandomMaskFunc(*args)
    assert "\n" not in str(exc.value)


def test_call_errors_are_one_line():
    with pytest.raises(MrlearnError, match="exceed"):
        RandomMaskFunc([0.2], [8])((1, 100), seed=0)  # 20 centre columns > 100 / 8
    with pytest.raises(MrlearnError, match="not a valid seed"):
        RandomMaskFunc([0.08], [4])((1, 100), seed=-1)
    with pytest.raises(MrlearnError, match="mask shape"):
        RandomMaskFunc([0.08], [4])((100,), seed=0)
    with pytest.raises(MrlearnError, match="offset"):
        EquiSpacedMaskFunc([0.08], [4])((1, 100), offset=-2)
