"""Monotone FISTA with backtracking and function-value restarts, for ``min_x f(x) + r(x)``.

``f`` smooth (value and gradient given by ``smooth(x) -> (value, grad)``), ``r`` with a cheap prox
(``prox(v, step) = argmin_x r(x) + ||x - v||^2 / (2 step)``) and value ``reg(x)``. Each accepted iterate
has an objective no larger than the previous one: when the accelerated step would increase the objective,
the momentum is reset and a plain proximal-gradient step is taken from the current iterate (which, with the
backtracked step ``1/L``, cannot increase it). Plain torch; no autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

SmoothFn = Callable[[torch.Tensor], tuple[float, torch.Tensor]]
ProxFn = Callable[[torch.Tensor, float], torch.Tensor]
RegFn = Callable[[torch.Tensor], float]


@dataclass
class FistaResult:
    x: torch.Tensor
    objective: float
    history: list[float] = field(default_factory=list)  # objective of each accepted iterate (history[0]: start)
    restarts: int = 0
    iterations: int = 0
    lipschitz: float = 0.0
    converged: bool = False


def fista(
    smooth: SmoothFn,
    prox: ProxFn,
    reg: RegFn,
    x0: torch.Tensor,
    lipschitz: float,
    max_iter: int = 500,
    tol: float = 1e-7,
    value: Callable[[torch.Tensor], float] | None = None,
    window: int = 10,
) -> FistaResult:
    """Run FISTA from ``x0`` with initial Lipschitz estimate ``lipschitz`` (doubled on failed backtracking).

    Stopping rule (``converged = True``): the relative objective decrease over the last ``window`` accepted
    iterates, ``(F_{k-window} - F_k) / |F_k|``, falls below ``tol`` (a plateau, not one slow step; judged once
    ``window`` iterates are in, so a warm start's first slow steps never pass for a plateau), or a plain
    proximal step from the current iterate no longer decreases the objective. ``max_iter`` is only a safety net:
    a run that reaches it has ``converged = False``. ``value(x)``: the smooth part's value alone (cheaper than
    ``smooth``; default ``smooth(x)[0]``).
    """
    value = value or (lambda v: smooth(v)[0])
    L = max(float(lipschitz), 1e-12)
    x = x0.clone()
    F_x = value(x) + reg(x)
    y, t = x.clone(), 1.0
    history, restarts, converged, it = [F_x], 0, False, 0
    for it in range(1, max_iter + 1):
        f_y, g_y = smooth(y)
        while True:
            x_new = prox(y - g_y / L, 1.0 / L)
            diff = x_new - y
            f_new = value(x_new)
            bound = f_y + float((g_y * diff).sum()) + 0.5 * L * float((diff * diff).sum())
            if f_new <= bound + 1e-12 * max(1.0, abs(bound)):
                break
            L *= 2.0
        F_new = f_new + reg(x_new)
        if F_new > F_x:
            if y is x:  # a plain step from x did not decrease: numerically converged
                converged = True
                break
            restarts += 1
            y, t = x, 1.0
            continue
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        y = x_new + ((t - 1.0) / t_new) * (x_new - x)
        x, F_x, t = x_new, F_new, t_new
        history.append(F_x)
        w = max(1, int(window))
        decrease = history[-1 - w] - F_x if len(history) > w else math.inf  # a full window first (warm starts)
        if decrease <= tol * max(abs(F_x), 1e-30):
            converged = True
            break
    return FistaResult(x=x, objective=F_x, history=history, restarts=restarts, iterations=it, lipschitz=L, converged=converged)
