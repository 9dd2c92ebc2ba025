"""SSDU Theta/Lambda split: disjoint, covering Omega, |Lambda| = round(rho |Omega|), centre kept, seeded, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrlearn.errors import MrlearnError
from mrlearn.ssl.split import SplitError, SplitOptions, centre_block, lambda_count, split_batch, ssdu_split


def column_mask(w: int = 32, centre: int = 6, extra: int = 8, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    m = np.zeros(w, np.float32)
    m[w // 2 - centre // 2 : w // 2 - centre // 2 + centre] = 1
    m[rng.choice(np.flatnonzero(m == 0), extra, replace=False)] = 1
    return torch.from_numpy(m).reshape(1, 1, w)


@pytest.mark.parametrize("selection", ["uniform", "gaussian"])
@pytest.mark.parametrize("rho", [0.4, 0.2, 0.6])
def test_points_split_is_a_partition_with_rho_fraction_and_centre_in_theta(selection, rho):
    h, w = 24, 32
    mask = column_mask(w)
    opts = SplitOptions(rho=rho, selection=selection, centre=(4, 4))
    theta, lam = ssdu_split(mask, (h, w), opts, np.random.default_rng(1))
    omega = torch.broadcast_to(mask, (1, h, w))
    assert theta.shape == lam.shape == (1, h, w)
    assert torch.all(theta * lam == 0)                       # disjoint
    assert torch.equal(theta + lam, omega)                  # cover Omega exactly
    n_omega = int(omega.sum())
    assert int(lam.sum()) == round(rho * n_omega)            # |Lambda| = rho |Omega|
    block = torch.from_numpy(centre_block((h, w), (4, 4)))
    assert torch.all(theta[0][block & (omega[0] > 0)] == 1)  # kept centre block stays in Theta
    assert torch.all(lam[0][block] == 0)


def test_lines_split_moves_whole_columns():
    mask = column_mask(40, centre=4, extra=12)
    theta, lam = ssdu_split(mask, (20, 40), SplitOptions(rho=0.4, centre=(0, 4), mode="lines"), np.random.default_rng(0))
    assert theta.shape == lam.shape == (1, 1, 40)
    assert torch.equal(theta + lam, mask) and torch.all(theta * lam == 0)
    assert int(lam.sum()) == round(0.4 * 16)
    assert torch.all(theta[0, 0, 18:22] == 1)


def test_split_is_reproducible_from_its_seed_and_differs_between_seeds():
    mask = column_mask(32).unsqueeze(0).repeat(2, 1, 1, 1)
    opts = SplitOptions()
    a = split_batch(mask, (16, 32), opts, [[0, 1], [0, 2]])
    b = split_batch(mask, (16, 32), opts, [[0, 1], [0, 2]])
    assert torch.equal(a[1], b[1])
    assert not torch.equal(a[1][0], a[1][1])


def test_gaussian_selection_prefers_the_centre():
    h, w = 64, 64
    mask = torch.ones(1, h, w)
    dist = {}
    for sel in ("uniform", "gaussian"):
        _, lam = ssdu_split(mask, (h, w), SplitOptions(rho=0.2, selection=sel, std_fraction=0.15), np.random.default_rng(3))
        rows, cols = np.nonzero(lam[0].numpy())
        dist[sel] = float(np.mean(np.hypot(rows - h // 2, cols - w // 2)))
    assert dist["gaussian"] < 0.7 * dist["uniform"]


def test_two_dimensional_masks_split_pointwise():
    rng = np.random.default_rng(0)
    mask = torch.from_numpy((rng.random((1, 20, 18)) < 0.4).astype(np.float32))
    theta, lam = ssdu_split(mask, (20, 18), SplitOptions(centre=(0, 0)), np.random.default_rng(0))
    assert torch.equal(theta + lam, mask)
    assert int(lam.sum()) == lambda_count(int(mask.sum()), 0.4)


def test_lambda_of_one_line_and_impossible_splits():
    w = 16
    mask = torch.zeros(1, 1, w)
    mask[..., 6:10] = 1
    mask[..., 0] = 1  # one acquired line outside the centre block
    theta, lam = ssdu_split(mask, (8, w), SplitOptions(rho=0.4, centre=(0, 4), mode="lines"), np.random.default_rng(0))
    assert int(lam.sum()) == 1 and lam[0, 0, 0] == 1    # Lambda of one line: the only candidate
    only_centre = torch.zeros(1, 1, w)
    only_centre[..., 6:10] = 1
    with pytest.raises(SplitError, match=r"f\.h5\[3\]: no acquired k-space location outside the kept centre block"):
        ssdu_split(only_centre, (8, w), SplitOptions(centre=(8, 4)), np.random.default_rng(0), where="f.h5[3]")
    with pytest.raises(MrlearnError, match="method.split_mode: 'lines' needs a 1-D column mask"):
        ssdu_split(torch.ones(1, 8, w), (8, w), SplitOptions(mode="lines"), np.random.default_rng(0))


@pytest.mark.parametrize("kw, fragment", [
    ({"rho": 1.0}, "method.rho: must be in (0, 1)"),
    ({"rho": 0}, "method.rho: must be in (0, 1)"),
    ({"selection": "poisson"}, "method.selection: unknown value 'poisson'"),
    ({"centre": (-1, 2)}, "method.centre: expected [rows, cols] >= 0"),
    ({"mode": "rows"}, "method.split_mode: unknown value 'rows'"),
])
def test_bad_options_are_one_line_errors(kw, fragment):
    with pytest.raises(MrlearnError) as err:
        SplitOptions(**kw)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_networks_are_called_by_their_declared_input_kind_not_by_argument_names():
    """ssdu.run_model: ``input_kind = "kspace"`` gets (k-space on Theta, Theta, maps); others a 2-channel image."""
    from torch import nn

    from mrlearn.ssl.ssdu import adjoint, run_model

    seen = {}

    class KspaceNet(nn.Module):
        input_kind = "kspace"

        def forward(self, x, m, s):  # argument names say nothing
            seen["kspace"] = (x.shape, m.shape, s)
            return adjoint(x, m, s)

    class ImageNet(nn.Module):
        def forward(self, kspace):  # an image network, whatever its argument is called
            seen["image"] = kspace.shape
            return kspace

    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 1, 8, 12, dtype=torch.complex64, generator=g)
    mask = column_mask(12, centre=4, extra=3).reshape(1, 1, 1, 12).expand(2, 1, 1, 12)
    a = run_model(KspaceNet(), k, mask, None)
    b = run_model(ImageNet(), k, mask, None)
    assert seen["kspace"] == ((2, 1, 8, 12), (2, 1, 1, 12), None) and seen["image"] == (2, 2, 8, 12)
    zero_filled = adjoint(k * mask, mask, None)
    assert torch.allclose(a, zero_filled) and torch.allclose(b, zero_filled, rtol=1e-6, atol=1e-6)
