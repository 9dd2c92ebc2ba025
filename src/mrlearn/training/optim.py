"""Optimizers and learning-rate schedules by name (registry kinds ``optimizer`` and ``scheduler``).

Schedulers step once per epoch. ``step``: ``lr * gamma ** (epoch // step_size)`` (Zerilli & Lodh's recipe: x0.1 at epoch 40).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mrlearn.registry import register


@register("optimizer", "rmsprop")
def rmsprop(params: Iterable[torch.nn.Parameter], lr: float = 1e-3, alpha: float = 0.99, momentum: float = 0.0,
            weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """RMSprop (Zerilli & Lodh's recipe: lr 1e-3)."""
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, momentum=momentum, weight_decay=weight_decay)


@register("optimizer", "adam")
def adam(params: Iterable[torch.nn.Parameter], lr: float = 1e-3, betas: list[float] = [0.9, 0.999],  # noqa: B006
         weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam."""
    if len(betas) != 2:
        raise ValueError("betas must be two numbers")
    return torch.optim.Adam(params, lr=lr, betas=(float(betas[0]), float(betas[1])), weight_decay=weight_decay)


@register("optimizer", "sgd")
def sgd(params: Iterable[torch.nn.Parameter], lr: float = 1e-2, momentum: float = 0.0,
        weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Plain SGD (update proportional to the gradient: RMSprop's and Adam's first steps are ``lr`` times the sign of
    each gradient element, so two runs that agree to float rounding can differ by ``2 lr`` where an element is ~0)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@register("scheduler", "step")
def step(optimizer: torch.optim.Optimizer, step_size: int = 40, gamma: float = 0.1) -> torch.optim.lr_scheduler.LRScheduler:
    """Step decay: multiply the learning rate by ``gamma`` every ``step_size`` epochs."""
    if step_size < 1:
        raise ValueError("step_size must be at least 1")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1] (the factor the rate is multiplied by), got {gamma}")
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
