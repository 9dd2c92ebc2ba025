"""Self-distillation (the DINO idea, Caron et al. 2021, as Zerilli & Lodh transferred it) for reconstruction, in plain torch.

Student ``f_s`` and teacher ``f_t`` share an architecture; the teacher is an exponential moving average of the
student, ``theta_t <- m theta_t + (1 - m) theta_s`` (no gradient). Views are two random sub-masks Theta_1, Theta_2
of the acquired locations Omega (SSDU splits with ``rho``: each view drops ``rho |Omega|`` locations, the centre
block is kept). The student sees view 1, the teacher view 2.

Variants:

* ``plain`` (Zerilli & Lodh): ``L = mean |f_s(y_1) - f_t(y_2)|^2`` in image space. Nothing ties the output to the
  measurements, and the view-specific part of the output is exactly what the loss removes, so the outputs shrink
  towards an input-independent image: the collapse to the zero image Zerilli & Lodh report.
* ``anchored`` (ours): the network is physics-guided (data consistency on its own view: its output must explain
  the k-space it was given, so it cannot be zero), and the student also carries the SSDU loss on the locations
  its view left out, ``L = w_ssdu * SSDU(Lambda_1) + w_distill * ||f_s(y_1) - f_t(y_2)||_2 / ||f_t(y_2)||_2``.
  The relative distillation term has no incentive to shrink the output.

Collapse monitor: :func:`mrlearn.ssl.losses.energy_ratio` of the student output against the zero-filled image of
the same view, ``||f_s(y_1)||^2 / ||A_1^H y_1||^2``; about 1 when healthy, towards 0 when collapsing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from mrlearn.ssl.losses import energy_ratio, relative_l2, ssdu_loss
from mrlearn.ssl.split import SplitOptions, split_batch
from mrlearn.ssl.ssdu import adjoint, forward_op, run_model

VARIANTS = ("plain", "anchored")


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of the student (the EMA teacher starts equal to the student)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``theta_t <- m theta_t + (1 - m) theta_s`` for parameters; buffers are copied."""
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(momentum).add_(ps.detach(), alpha=1.0 - momentum)
    for bt, bs in zip(teacher.buffers(), student.buffers()):
        bt.copy_(bs)


def _global_batch_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 of the batch of every process (the local mean without torch.distributed)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x.mean(dim=0)
    parts = torch.view_as_real(x.sum(dim=0)) if x.is_complex() else x.sum(dim=0)
    flat = torch.cat([parts.reshape(-1), torch.tensor([float(x.shape[0])], device=x.device, dtype=parts.dtype)])
    dist.all_reduce(flat)
    total = flat[:-1].reshape(parts.shape) / flat[-1]
    return torch.view_as_complex(total.contiguous()) if x.is_complex() else total


class TeacherCentre(nn.Module):
    """DINO centring for the plain variant: ``t - c`` with ``c`` the EMA (``momentum``) of the batch-mean teacher output.

    Reset when the image size changes. Returns the centred teacher output and updates ``c`` (no gradient). Under
    torch.distributed the batch mean is over the GLOBAL batch (sums and counts all-reduced), as in one process.
    """

    def __init__(self, momentum: float = 0.9):
        super().__init__()
        self.momentum = float(momentum)
        self.register_buffer("centre", torch.zeros(0, dtype=torch.complex64), persistent=False)

    @torch.no_grad()
    def forward(self, teacher_out: torch.Tensor) -> torch.Tensor:
        mean = _global_batch_mean(teacher_out)
        if self.centre.shape != mean.shape:
            self.centre = torch.zeros_like(mean)
        out = teacher_out - self.centre
        self.centre = self.momentum * self.centre + (1 - self.momentum) * mean
        return out


@dataclass
class DistillStep:
    """Loss of one step, its parts, and the collapse monitor ``[B]`` of the student output."""

    loss: torch.Tensor
    distill: torch.Tensor
    ssdu: torch.Tensor
    energy: torch.Tensor
    student_output: torch.Tensor


def distill_step(student: nn.Module, teacher: nn.Module, kspace: torch.Tensor, mask: torch.Tensor,
                 maps: torch.Tensor | None, options: SplitOptions, seeds: Sequence[Sequence[int]],
                 variant: Literal["plain", "anchored"] = "anchored", ssdu_weight: float = 1.0,
                 distill_weight: float = 1.0, names: Sequence[str] | None = None,
                 centre: "TeacherCentre | None" = None) -> DistillStep:
    """One self-distillation loss (see the module docstring); the caller steps the optimizer and the EMA."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    shape = (int(kspace.shape[-2]), int(kspace.shape[-1]))
    theta1, lam1 = split_batch(mask, shape, options, [[*s, 1] for s in seeds], names)
    theta2, _ = split_batch(mask, shape, options, [[*s, 2] for s in seeds], names)
    student_out = run_model(student, kspace, theta1, maps)
    with torch.no_grad():
        teacher_out = run_model(teacher, kspace, theta2, maps)
    energy = energy_ratio(student_out, adjoint(kspace * theta1.to(kspace.real.dtype), theta1, maps))
    zero = student_out.real.sum() * 0.0
    if variant == "plain":
        if centre is not None:
            teacher_out = centre(teacher_out)
        distill = (student_out - teacher_out).abs().pow(2).mean()
        return DistillStep(distill, distill.detach(), zero.detach(), energy, student_out)
    distill = relative_l2(student_out, teacher_out).loss
    ssdu = ssdu_loss(forward_op(student_out, maps, None), kspace, lam1).loss if ssdu_weight > 0 else zero
    loss = ssdu_weight * ssdu + distill_weight * distill
    return DistillStep(loss, distill.detach(), ssdu.detach(), energy, student_out)
