"""One multi-task gradient computation: one backward per task, per-task gradients of the shared parameters only.

``multitask_backward(task_losses, weighting, shared)``: for each task ``t`` (in order) the closure ``task_losses[t]``
runs the forward pass of that task's samples and returns the raw loss ``L_t``; ``weighting.task_loss(t, L_t)`` is
back-propagated once (task-specific parameters accumulate their gradient in ``.grad`` as usual); the shared
parameters' gradient is read into row ``t`` of a ``[T', P]`` matrix and cleared. ``weighting.combine`` turns the
rows into the shared update, which is written back into the shared ``.grad``. The caller zeroes gradients before
and steps the optimizer after. No Lightning here (the LightningModule and the benchmark both call it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from mrlearn.mtl.weighting import MGDA, Weighting


@dataclass
class StepResult:
    """Raw task losses ``[T']``, weights ``[T]`` after the step, per-task shared-gradient norms ``[T']``."""

    tasks: list[int]
    losses: torch.Tensor
    weights: torch.Tensor
    grad_norms: torch.Tensor


def _flat_grad(params: Sequence[nn.Parameter]) -> torch.Tensor:
    parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=p.device, dtype=p.dtype)
             for p in params]
    return torch.cat(parts) if parts else torch.zeros(0)


def _write_grad(params: Sequence[nn.Parameter], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n


def multitask_backward(task_losses: dict[int, Callable[[], torch.Tensor]], weighting: Weighting,
                       shared: Sequence[nn.Parameter], backward: Callable[[torch.Tensor], None] | None = None) -> StepResult:
    """Back-propagate every task once and combine the shared gradients (see the module docstring).

    ``backward`` replaces ``loss.backward()`` (Lightning's ``manual_backward`` for precision plugins).
    """
    backward = backward or (lambda loss: loss.backward())
    shared = [p for p in shared if p.requires_grad]
    for p in shared:
        p.grad = None
    tasks = sorted(task_losses)
    rows, raw = [], []
    for t in tasks:
        loss = task_losses[t]()
        raw.append(loss.detach().float().reshape(()))
        backward(weighting.task_loss(t, loss))
        rows.append(_flat_grad(shared).detach().clone())
        for p in shared:
            p.grad = None
    losses = torch.stack(raw) if raw else torch.zeros(0)
    if shared and rows:
        grads = torch.stack(rows)
        if isinstance(weighting, MGDA):
            weighting.set_losses(losses.to(grads.device))
        combined = weighting.combine(grads, tasks)
        _write_grad(shared, combined)
        norms = grads.float().norm(dim=1)
    else:
        norms = torch.zeros(len(tasks))
    weighting.after_step(norms.cpu(), losses.cpu(), tasks)
    return StepResult(tasks, losses.cpu(), weighting.weights().cpu(), norms.cpu())
