"""Self-distillation: the seed-002 (plain) variant collapses to the zero image on tiny data, the anchored one does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import helpers_training  # noqa: F401  (one torch thread: the test machine is small and shared)
from helpers_data import make_kspace
from mrlearn.models.resnet import ResNet
from mrlearn.models.unrolled import UnrolledNet
from mrlearn.ssl.distill import TeacherCentre, distill_step, ema_update, make_teacher
from mrlearn.ssl.losses import energy_ratio
from mrlearn.ssl.split import SplitOptions
from mrlearn.ssl.ssdu import adjoint, estimate_maps, run_model


def _data():
    k = torch.from_numpy(make_kspace(slices=4, coils=3, h=24, w=24, seed=1))
    rng = np.random.default_rng(0)
    m = np.zeros(24, np.float32)
    m[10:14] = 1
    m[rng.choice(np.r_[0:10, 14:24], 6, replace=False)] = 1
    mask = torch.from_numpy(m).reshape(1, 1, 1, 24).repeat(4, 1, 1, 1)
    kspace = k * mask
    return kspace, mask, estimate_maps(kspace, mask)


def _train(model, variant: str, steps: int) -> list[float]:
    """Plain-torch self-distillation; returns the teacher's energy ratio on all of Omega after each 10 steps."""
    kspace, mask, maps = _data()
    teacher = make_teacher(model)
    centre = TeacherCentre(0.9) if variant == "plain" else None
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    zf = adjoint(kspace, mask, maps)
    ratios = []
    for i in range(steps):
        step = distill_step(model, teacher, kspace, mask, maps, SplitOptions(rho=0.4, centre=(4, 4)),
                            [[0, i, b] for b in range(4)], variant=variant, centre=centre)
        assert torch.isfinite(step.loss)
        opt.zero_grad()
        step.loss.backward()
        opt.step()
        ema_update(teacher, model, 0.9)
        if (i + 1) % 10 == 0:
            with torch.no_grad():
                ratios.append(float(energy_ratio(run_model(teacher, kspace, mask, maps), zf).mean()))
    return ratios


def test_plain_variant_collapses_to_the_zero_image():
    torch.manual_seed(0)
    ratios = _train(ResNet(2, 2, chans=8, num_blocks=2), "plain", 60)
    assert ratios[-1] < 0.05, ratios  # output energy under 5 % of the zero-filled energy: collapsed


def test_anchored_variant_does_not_collapse():
    torch.manual_seed(0)
    ratios = _train(UnrolledNet(cascades=2, dc="cg", cg_iters=3, chans=8, num_blocks=1, maps="given"), "anchored", 40)
    assert min(ratios) > 0.5, ratios


def test_ema_update_closed_form_and_teacher_is_frozen():
    torch.manual_seed(0)
    student = torch.nn.Linear(3, 2)
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    before = teacher.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema_update(teacher, student, 0.75)
    assert torch.allclose(teacher.weight, 0.75 * before + 0.25 * student.weight)


def test_bad_variant_is_rejected():
    kspace, mask, maps = _data()
    net = ResNet(2, 2, chans=2, num_blocks=1)
    with pytest.raises(ValueError, match="variant"):
        distill_step(net, make_teacher(net), kspace, mask, maps, SplitOptions(), [[0]] * 4, variant="dino")
