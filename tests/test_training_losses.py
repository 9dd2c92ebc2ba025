"""Training losses by name: l1/l2 closed forms, ssim = 1 - fastMRI SSIM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrlearn import registry



def test_l1_l2_closed_forms():
    out, tgt = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 3.0)
    assert registry.build("loss", "l1", "loss")(out, tgt).item() == pytest.approx(3.0)
    assert registry.build("loss", {"name": "l2"}, "loss")(out, tgt).item() == pytest.approx(9.0)


def test_ssim_loss_is_one_minus_fastmri_ssim():
    from mrlearn.evaluation.metrics import ssim

    rng = np.random.default_rng(0)
    target = rng.random((2, 1, 24, 20)).astype(np.float32)
    pred = (target + 0.1 * rng.standard_normal(target.shape)).astype(np.float32)
    loss = registry.build("loss", {"name": "ssim"}, "loss")
    rng_t = torch.tensor([float(t.max()) for t in target])
    got = loss(torch.from_numpy(pred), torch.from_numpy(target), rng_t).item()
    expect = 1 - np.mean([ssim(target[i], pred[i], maxval=float(target[i].max())) for i in range(2)])
    assert got == pytest.approx(expect, abs=1e-4)
    assert loss(torch.from_numpy(target), torch.from_numpy(target), rng_t).item() == pytest.approx(0.0, abs=1e-5)
