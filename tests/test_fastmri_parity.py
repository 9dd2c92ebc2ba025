"""fastMRI parity: masks identical to fastMRI's algorithm for the same seed; centre crop; evaluate's square crop.

The reference below restates fastMRI's ``fastmri/data/subsample.py`` (numpy's legacy ``RandomState`` seeded with
the call's seed; pair drawn with ``randint(len(center_fractions))`` or ``choice`` twice; centre block from
``(W - n_low + 1) // 2``; random: ``uniform(size=W) < p``; equispaced: ``offset::R`` with ``offset =
randint(0, round(R))``; fraction: ``around(arange(offset, W - 1, a))`` with the adjusted acceleration ``a``), written
from its description and independent of ``mrlearn.physics.masks``. ``benchmarks/mask_parity.py --fastmri PATH``
compares with fastMRI's own code from a checkout.
"""

import numpy as np
import pytest
import torch

from mrlearn.physics.masks import EquispacedMaskFractionFunc, EquiSpacedMaskFunc, RandomMaskFunc, file_seed


def reference_mask(kind, center_fractions, accelerations, shape, rng, offset=None, any_combination=False):
    """fastMRI's column mask for ``shape (..., H, W, 2)`` drawn from the RandomState ``rng``; (mask, n_low)."""
    if any_combination:
        cf, r = rng.choice(center_fractions), rng.choice(accelerations)
    else:
        k = rng.randint(len(center_fractions))
        cf, r = center_fractions[k], accelerations[k]
    w = shape[-2]
    n_low = round(w * cf)
    centre = np.zeros(w, np.float32)
    first = (w - n_low + 1) // 2
    centre[first:first + n_low] = 1
    lines = np.zeros(w, np.float32)
    if kind == "random":
        lines = (rng.uniform(size=w) < (w / r - n_low) / (w - n_low)).astype(np.float32)
    elif kind == "equispaced":
        start = rng.randint(0, high=round(r)) if offset is None else offset
        lines[start::int(r)] = 1
    else:
        a = (r * (n_low - w)) / (n_low * r - w)
        start = rng.randint(0, high=round(a)) if offset is None else offset
        lines[np.around(np.arange(start, w - 1, a)).astype(np.uint)] = 1
    out = [1] * len(shape)
    out[-2] = w
    return np.maximum(centre, lines).reshape(out), n_low


CLASSES = {"random": RandomMaskFunc, "equispaced": EquiSpacedMaskFunc, "fraction": EquispacedMaskFractionFunc}


@pytest.mark.parametrize("kind", sorted(CLASSES))
@pytest.mark.parametrize("width", [320, 368, 372, 640])
def test_masks_identical_to_fastmri_for_100_seeds(kind, width):
    cfs, accs = [0.08, 0.04], [4, 8]
    f = CLASSES[kind](cfs, accs)
    shape = (1, 640, width, 2)
    for i in range(100):
        seed = i if i % 2 else file_seed(f"file{1000000 + i}.h5")  # ints and fastMRI's per-file tuples
        ours, n_ours = f(shape, seed=seed)
        ref, n_ref = reference_mask(kind, cfs, accs, shape, np.random.RandomState(seed))
        assert n_ours == n_ref
        assert ours.dtype == torch.float32 and tuple(ours.shape) == ref.shape
        np.testing.assert_array_equal(ours.numpy(), ref, err_msg=f"{kind} W={width} seed={seed}")


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_offsets_any_combination_and_unseeded_streams_match(kind):
    cfs, accs = [0.08, 0.04], [4, 8]
    shape = (15, 640, 368, 2)
    f = CLASSES[kind](cfs, accs, allow_any_combination=True)
    for seed in range(20):
        np.testing.assert_array_equal(f(shape, seed=seed)[0].numpy(),
                                      reference_mask(kind, cfs, accs, shape, np.random.RandomState(seed),
                                                     any_combination=True)[0])
    if kind != "random":
        g = CLASSES[kind](cfs, accs)
        for seed, offset in [(0, 0), (1, 3), (2, 1)]:
            np.testing.assert_array_equal(g(shape, offset=offset, seed=seed)[0].numpy(),
                                          reference_mask(kind, cfs, accs, shape, np.random.RandomState(seed),
                                                         offset=offset)[0])
    # seed=None: fastMRI draws from RandomState(constructor seed), which advances call after call
    h = CLASSES[kind](cfs, accs, seed=11)
    stream = np.random.RandomState(11)
    for _ in range(5):
        np.testing.assert_array_equal(h(shape)[0].numpy(), reference_mask(kind, cfs, accs, shape, stream)[0])
