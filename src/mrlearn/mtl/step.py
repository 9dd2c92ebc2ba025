"""One multi-task gradient computation: one backward per task, per-task gradients of the shared parameters only.

``multitask_backward(task_losses, weighting, shared)``: for each task ``t`` (in order) the closure ``task_losses[t]``
runs the forward pass of that task's samples and returns the raw loss ``L_t``; ``weighting.task_loss(t, L_t)`` is
back-propagated once (task-specific parameters accumulate their gradient in ``.grad`` as usual); the shared
parameters' gradient is read into row ``t`` of a ``[T', P]`` matrix and cleared. ``weighting.combine`` turns the
rows into the shared update, which is written back into the shared ``.grad``. The caller zeroes gradients before
and steps the optimizer after. No Lightning here (the LightningModule and the benchmark both call it).

Several processes (DDP): each process runs the tasks of its own share of the global batch with ``scale[t] =
n_t / N_t`` (its samples of task ``t`` over the global count), and ``reduce`` sums, over the processes, the
per-task rows, the scaled raw losses and the gradients of the non-shared parameters before ``combine``. The
weighted task losses are affine in ``L_t``, so the sums equal the single-process gradients of the global batch;
``tasks`` then lists every task present in the GLOBAL batch (a process without samples of a task gives a zero
row) and every process computes the same combined direction.
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
        p.grad = flat[offset : offset + n].to(p.device, p.dtype).reshape(p.shape).clone()
        offset += n


#: sums ``(rows [T', P], losses [T'], other_grads [Q])`` over processes (DDP); identity in one process
Reduce = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def multitask_backward(task_losses: dict[int, Callable[[], torch.Tensor]], weighting: Weighting,
                       shared: Sequence[nn.Parameter], backward: Callable[[torch.Tensor], None] | None = None,
                       tasks: Sequence[int] | None = None, scale: dict[int, float] | None = None,
                       others: Sequence[nn.Parameter] = (), reduce: Reduce | None = None) -> StepResult:
    """Back-propagate every task once and combine the shared gradients (see the module docstring).

    ``backward`` replaces ``loss.backward()`` (Lightning's ``manual_backward`` for precision plugins).
    ``tasks`` (default: the keys of ``task_losses``), ``scale``, ``others`` (the non-shared parameters whose
    gradients ``reduce`` sums) and ``reduce``: the several-process case of the module docstring.
    """
    backward = backward or (lambda loss: loss.backward())
    shared = [p for p in shared if p.requires_grad]
    for p in shared:
        p.grad = None
    tasks = sorted(task_losses) if tasks is None else sorted(int(t) for t in tasks)
    scale = scale or {}
    rows, raw = [], []
    for t in tasks:
        if t not in task_losses:  # no local samples of a task present elsewhere in the global batch
            rows.append(None)
            raw.append(torch.zeros(()))
            continue
        loss = task_losses[t]()
        s = float(scale.get(t, 1.0))
        raw.append(loss.detach().float().reshape(()).cpu() * s)
        backward(weighting.task_loss(t, loss) * s if s != 1.0 else weighting.task_loss(t, loss))
        rows.append(_flat_grad(shared).detach().clone())
        for p in shared:
            p.grad = None
    size = sum(p.numel() for p in shared)
    ref = next(iter(shared), None)
    rows = [torch.zeros(size, device=ref.device if ref is not None else "cpu",
                        dtype=ref.dtype if ref is not None else torch.float32) if r is None else r for r in rows]
    losses = torch.stack(raw) if raw else torch.zeros(0)
    if reduce is not None:
        others = [p for p in others if p.requires_grad]
        grads_in = torch.stack(rows) if rows else torch.zeros(0, size)
        used = torch.tensor([float(p.grad is not None) for p in others], dtype=losses.dtype)
        flat = torch.cat([_flat_grad(others).to(used.device, used.dtype), used]) if others else used
        reduced, losses, other = reduce(grads_in, losses, flat)
        rows = list(reduced)
        if others:  # a parameter no process used keeps grad None (the optimizer skips it, as in one process)
            n = sum(p.numel() for p in others)
            _write_grad(others, other[:n])
            for p, u in zip(others, other[n:].tolist()):
                if u == 0:
                    p.grad = None
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
