"""Multi-task loss weighting and gradient combination (plain torch; no Lightning).

Every method is a :class:`Weighting` with two hooks, used once per optimizer step by ``mtl.step``:

* ``task_loss(t, loss)`` -> the scalar to back-propagate for task ``t`` (``lambda_t L_t`` for loss-based methods,
  ``exp(-s_t) L_t / 2 + s_t / 2`` for uncertainty, plain ``L_t`` for gradient-based methods);
* ``combine(grads, tasks)`` -> the update direction of the SHARED parameters from the per-task gradients
  ``grads`` ``[T', P]`` (one row per task present in the batch, as back-propagated through ``task_loss``);
  loss-based methods sum the rows, MGDA / PCGrad / CAGrad combine them.

Task-specific parameters get the sum of their per-task gradients as back-propagated (each is touched by one
task). ``weights()`` returns the current lambdas for logging; ``epoch_end(mean_losses)`` receives the epoch
averaged task losses (DWA). Convention: weights sum to ``T`` (the number of tasks) where a method normalises
them (DWA, GradNorm, inverse, MGDA x T), so "equal" (all 1) is the common reference point.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from mrlearn.errors import input_error
from mrlearn import registry

WHERE = "tasks.weighting"


def register(name: str):
    """Register a weighting under the main registry's kind ``"weighting"``."""
    return registry.register("weighting", name)


class Weighting(nn.Module):
    """Base: fixed per-task weights ``lam`` (a buffer) applied to the losses; shared gradients summed."""

    #: True: the method reads the per-task gradients of the shared parameters (``combine`` or ``after_step``), so
    #: training runs one backward per task (manual optimisation); False: one backward of ``sum_t task_loss(t, L_t)``
    needs_grads: bool = False

    def __init__(self, num_tasks: int, lam: Sequence[float] | None = None):
        super().__init__()
        if num_tasks < 1:
            raise input_error(WHERE, f"needs at least one task, got {num_tasks}", "list tasks under tasks.tasks")
        self.num_tasks = int(num_tasks)
        lam = [1.0] * num_tasks if lam is None else [float(v) for v in lam]
        self.register_buffer("lam", torch.tensor(lam, dtype=torch.float32), persistent=True)

    def task_loss(self, t: int, loss: torch.Tensor) -> torch.Tensor:
        return self.lam[t].to(loss.dtype) * loss

    def combine(self, grads: torch.Tensor, tasks: Sequence[int]) -> torch.Tensor:
        return grads.sum(0)

    def weights(self) -> torch.Tensor:
        return self.lam.detach().clone()

    def epoch_end(self, mean_losses: Sequence[float]) -> None:
        """Called with the epoch-averaged raw task losses (NaN for a task not seen in the epoch)."""

    def after_step(self, grad_norms: torch.Tensor, losses: torch.Tensor, tasks: Sequence[int]) -> None:
        """Called after ``combine`` with per-task shared-gradient norms and raw losses (GradNorm)."""


@register("equal")
class Equal(Weighting):
    """Naive: ``lambda_t = 1``."""

    def __init__(self, num_tasks: int = 2):
        super().__init__(num_tasks)


@register("fixed")
class Fixed(Weighting):
    """Naive: fixed user weights ``weights`` (one per task)."""

    def __init__(self, num_tasks: int = 2, weights: list[float] | None = None):
        if weights is None or len(weights) != num_tasks or any(w < 0 for w in weights):
            raise input_error(f"{WHERE}.weights", f"needs {num_tasks} non-negative numbers, got {weights!r}",
                              "give one weight per task, e.g. [1.0, 2.0]")
        super().__init__(num_tasks, weights)


def inverse_size_weights(sizes: Sequence[int]) -> list[float]:
    """``lambda_t = T (N - N_t) / ((T - 1) N)`` (sums to T; for T = 2 this is ``T (N - N_t) / N``)."""
    n = np.asarray(sizes, dtype=np.float64)
    t = n.size
    if t == 1:
        return [1.0]
    if np.any(n <= 0):
        raise input_error(f"{WHERE}", f"inverse weighting needs every task to have samples, got sizes {list(sizes)}",
                          "check the tasks' contrasts and fractions")
    return (t * (n.sum() - n) / ((t - 1) * n.sum())).tolist()


@register("inverse")
class Inverse(Weighting):
    """Naive: weights inverse to the training-set sizes ``sizes`` (given by the data module at run time)."""

    def __init__(self, num_tasks: int = 2, sizes: list[int] | None = None):
        super().__init__(num_tasks, inverse_size_weights(sizes) if sizes else None)


def dwa_weights(history: Sequence[Sequence[float]], temperature: float = 2.0) -> np.ndarray:
    """Dynamic weight average (Liu et al. 2019) from the epoch-averaged loss history ``[epochs, T]``.

    ``w_k = L_k(e-1) / L_k(e-2)``, ``lambda = T softmax(w / temperature)``; ones before two epochs exist.
    """
    h = np.asarray(history, dtype=np.float64)
    t = h.shape[1] if h.ndim == 2 else 0
    if h.ndim != 2 or h.shape[0] < 2:
        return np.ones(max(t, 1))
    prev, prev2 = h[-1], h[-2]
    ok = np.isfinite(prev) & np.isfinite(prev2) & (prev2 > 0)
    w = np.where(ok, prev / np.where(ok, prev2, 1.0), 1.0)
    e = np.exp((w - w.max()) / temperature)
    return t * e / e.sum()


@register("dwa")
class DWA(Weighting):
    """DWA with temperature ``temperature`` (2 as in the paper); weights change once per epoch."""

    def __init__(self, num_tasks: int = 2, temperature: float = 2.0):
        super().__init__(num_tasks)
        if temperature <= 0:
            raise input_error(f"{WHERE}.temperature", f"must be > 0, got {temperature}", "use 2")
        self.temperature = float(temperature)
        self.history: list[list[float]] = []

    def epoch_end(self, mean_losses: Sequence[float]) -> None:
        self.history.append([float(v) for v in mean_losses])
        self.lam.copy_(torch.as_tensor(dwa_weights(self.history, self.temperature), dtype=torch.float32))

    def get_extra_state(self) -> dict:
        return {"history": self.history}

    def set_extra_state(self, state: dict) -> None:
        self.history = [list(map(float, h)) for h in state.get("history", [])]


@register("uncertainty")
class Uncertainty(Weighting):
    """Kendall et al. 2018: ``exp(-s_t) L_t / 2 + s_t / 2`` with learned ``s_t = log sigma_t^2`` (init 0)."""

    def __init__(self, num_tasks: int = 2):
        super().__init__(num_tasks)
        self.log_var = nn.Parameter(torch.zeros(num_tasks))

    def task_loss(self, t: int, loss: torch.Tensor) -> torch.Tensor:
        s = self.log_var[t].to(loss.dtype)
        return 0.5 * torch.exp(-s) * loss + 0.5 * s

    def weights(self) -> torch.Tensor:
        return 0.5 * torch.exp(-self.log_var.detach())


def min_norm_weights(gram: torch.Tensor, iters: int = 50, tol: float = 1e-8) -> torch.Tensor:
    """Min-norm point of the convex hull of gradients by Frank-Wolfe (Sener & Koltun 2018).

    ``gram`` ``[T, T]`` = ``G G^T``; returns ``w`` on the simplex minimising ``w^T gram w``. Each Frank-Wolfe step
    moves towards the vertex with the smallest ``(gram w)_i`` with the exact line search of the two-point problem.
    For two tasks one step is exact: ``gamma = clip((g2 - g1).g2 / ||g1 - g2||^2, 0, 1)``, ``w = (gamma, 1 - gamma)``.
    """
    m = gram.double()
    t = m.shape[0]
    if t == 1:
        return torch.ones(1, dtype=gram.dtype)
    if t == 2:
        g11, g12, g22 = m[0, 0], m[0, 1], m[1, 1]
        denom = g11 + g22 - 2 * g12
        gamma = torch.clamp((g22 - g12) / denom, 0.0, 1.0) if denom > 1e-20 else torch.tensor(0.5, dtype=m.dtype)
        return torch.stack([gamma, 1 - gamma]).to(gram.dtype)
    w = torch.full((t,), 1.0 / t, dtype=m.dtype)
    for _ in range(iters):
        mw = m @ w
        i = int(torch.argmin(mw))
        # line search between w and vertex e_i: minimise ||(1-g) v + g e_i||^2 with v = G^T w, u = g_i
        vv, vu, uu = w @ mw, mw[i], m[i, i]
        denom = vv - 2 * vu + uu
        if denom <= 1e-20:
            break
        gamma = float(torch.clamp((vv - vu) / denom, 0.0, 1.0))
        new = (1 - gamma) * w
        new[i] += gamma
        if torch.sum(torch.abs(new - w)) < tol:
            w = new
            break
        w = new
    return w.to(gram.dtype)


@register("mgda")
class MGDA(Weighting):
    """Pareto / MGDA-UB: shared direction ``T * sum_t w_t g_t`` with ``w`` the min-norm simplex point.

    ``normalize``: ``none``, ``l2`` (each gradient divided by its norm before the min-norm problem) or ``loss``
    (divided by the task loss). The weights are applied to the raw gradients; scaling by ``T`` makes them sum to
    ``T`` like the loss-based methods.
    """

    needs_grads = True

    def __init__(self, num_tasks: int = 2, normalize: str = "none"):
        super().__init__(num_tasks)
        if normalize not in ("none", "l2", "loss"):
            raise input_error(f"{WHERE}.normalize", f"unknown value {normalize!r}", "choose one of: none, l2, loss")
        self.normalize = normalize
        self._losses: torch.Tensor | None = None

    def task_loss(self, t: int, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def set_losses(self, losses: torch.Tensor) -> None:
        self._losses = losses

    def combine(self, grads: torch.Tensor, tasks: Sequence[int]) -> torch.Tensor:
        g = grads.double()
        if self.normalize == "l2":
            scale = g.norm(dim=1).clamp_min(1e-12)
        elif self.normalize == "loss" and self._losses is not None:
            scale = self._losses.double().clamp_min(1e-12)
        else:
            scale = torch.ones(g.shape[0], dtype=g.dtype)
        gn = g / scale[:, None]
        w = min_norm_weights(gn @ gn.T) / scale  # weights for the raw gradients
        w = w / w.sum() * len(tasks)
        lam = torch.ones(self.num_tasks)
        lam[list(tasks)] = w.float()
        self.lam.copy_(lam)
        return (w[:, None] * g).sum(0).to(grads.dtype)


def pcgrad(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad (Yu et al. 2020): project each task gradient onto the normal plane of every conflicting one.

    For task ``i`` and the other tasks ``j`` in a random order: when ``g_i' . g_j < 0``,
    ``g_i' <- g_i' - (g_i' . g_j) / ||g_j||^2 g_j`` (projections use the ORIGINAL ``g_j``). Returns ``sum_i g_i'``.
    """
    t = grads.shape[0]
    g = grads.double()
    out = g.clone()
    sq = (g * g).sum(1).clamp_min(1e-30)
    for i in range(t):
        order = torch.randperm(t, generator=generator).tolist()
        for j in order:
            if j == i:
                continue
            dot = out[i] @ g[j]
            if dot < 0:
                out[i] = out[i] - dot / sq[j] * g[j]
    return out.sum(0).to(grads.dtype)


@register("pcgrad")
class PCGrad(Weighting):
    """PCGrad with a seeded random projection order (``seed``)."""

    needs_grads = True

    def __init__(self, num_tasks: int = 2, seed: int = 0):
        super().__init__(num_tasks)
        self.generator = torch.Generator().manual_seed(int(seed))

    def task_loss(self, t: int, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def combine(self, grads: torch.Tensor, tasks: Sequence[int]) -> torch.Tensor:
        return pcgrad(grads, self.generator)


def _simplex_projection(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (sort-based)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, v.size + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    theta = css[rho] / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def cagrad(grads: torch.Tensor, c: float = 0.5, iters: int = 200) -> torch.Tensor:
    """Conflict-averse gradient (Liu et al. 2021), un-rescaled: ``d = g0 + c ||g0|| g_w / ||g_w||``.

    ``g0`` is the mean gradient; ``w`` on the simplex minimises ``g_w . g0 + c ||g0|| ||g_w||`` (``g_w = G^T w``),
    solved by projected gradient descent on the ``T x T`` Gram matrix. ``d`` maximises the worst task improvement
    ``min_i g_i . d`` within the ball ``||d - g0|| <= c ||g0||``. ``c = 0`` gives the mean gradient.
    """
    g = grads.double()
    t = g.shape[0]
    g0 = g.mean(0)
    if t == 1 or c <= 0:
        return g0.to(grads.dtype)
    gram = (g @ g.T).numpy()
    b = gram.mean(1)  # G g0
    g0n = math.sqrt(max(float(gram.mean()), 0.0))
    cn = c * g0n
    w = np.full(t, 1.0 / t)
    lip = np.linalg.norm(gram, 2) * (1 + cn / max(g0n, 1e-30)) + 1e-30
    step = 1.0 / lip
    for _ in range(iters):
        gw_sq = max(float(w @ gram @ w), 1e-30)
        grad = b + cn * (gram @ w) / math.sqrt(gw_sq)
        new = _simplex_projection(w - step * grad)
        if np.abs(new - w).sum() < 1e-12:
            w = new
            break
        w = new
    gw = torch.as_tensor(w, dtype=g.dtype) @ g
    d = g0 + cn * gw / gw.norm().clamp_min(1e-30)
    return d.to(grads.dtype)


@register("cagrad")
class CAGrad(Weighting):
    """CAGrad with radius ``c`` (0.5 default); the direction is scaled by ``T / (1 + c)`` (sum-of-losses scale)."""

    needs_grads = True

    def __init__(self, num_tasks: int = 2, c: float = 0.5):
        super().__init__(num_tasks)
        if c < 0:
            raise input_error(f"{WHERE}.c", f"must be >= 0, got {c}", "use e.g. 0.5")
        self.c = float(c)

    def task_loss(self, t: int, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def combine(self, grads: torch.Tensor, tasks: Sequence[int]) -> torch.Tensor:
        return cagrad(grads, self.c) * (len(tasks) / (1.0 + self.c))


def gradnorm_update(w: torch.Tensor, norms: torch.Tensor, losses: torch.Tensor, initial: torch.Tensor,
                    alpha: float, lr: float) -> torch.Tensor:
    """One GradNorm step (Chen et al. 2018) on the weights ``w`` ``[T]``; returns the renormalised weights.

    ``norms`` are ``||grad_shared L_t||`` of the raw losses, so ``G_t = w_t norms_t``; ``r_t = (L_t / L_t(0)) /
    mean(...)``; target ``mean(G) r_t^alpha`` (held constant); loss ``sum_t |G_t - target_t|`` whose gradient in
    ``w_t`` is ``sign(G_t - target_t) norms_t``. After the step ``w`` is clamped positive and rescaled to sum T.
    """
    gw = w * norms
    ratio = losses / initial.clamp_min(1e-30)
    r = ratio / ratio.mean().clamp_min(1e-30)
    target = gw.mean() * r.pow(alpha)
    grad = torch.sign(gw - target) * norms
    new = (w - lr * grad).clamp_min(1e-4)
    return new * (w.numel() / new.sum())


@register("gradnorm")
class GradNorm(Weighting):
    """GradNorm with asymmetry ``alpha`` (1.5) and weight learning rate ``lr``; norms over the shared parameters."""

    needs_grads = True

    def __init__(self, num_tasks: int = 2, alpha: float = 1.5, lr: float = 0.025):
        super().__init__(num_tasks)
        self.alpha, self.lr = float(alpha), float(lr)
        self.register_buffer("initial", torch.full((num_tasks,), float("nan")), persistent=True)

    def after_step(self, grad_norms: torch.Tensor, losses: torch.Tensor, tasks: Sequence[int]) -> None:
        if len(tasks) < 2:
            return
        idx = list(tasks)
        init = self.initial[idx]
        fresh = torch.isnan(init)
        init = torch.where(fresh, losses.float(), init)
        self.initial[idx] = init
        lam = self.lam[idx]
        raw_norms = grad_norms.float() / lam.clamp_min(1e-12)  # rows were back-propagated with the weights
        new = gradnorm_update(lam, raw_norms, losses.float(), init, self.alpha, self.lr)
        full = self.lam.clone()
        full[idx] = new * (lam.sum() / new.sum())
        self.lam.copy_(full)


def build_weighting(section: dict | str | None, num_tasks: int, sizes: Sequence[int] | None = None) -> Weighting:
    """A weighting from its config section (``{name: dwa, temperature: 2}``); ``sizes`` feeds ``inverse``."""
    section = {"name": "equal"} if section is None else ({"name": section} if isinstance(section, str) else dict(section))
    runtime: dict = {"num_tasks": num_tasks}
    if section.get("name") == "inverse":
        runtime["sizes"] = list(sizes) if sizes is not None else None
    return registry.build("weighting", section, WHERE, **runtime)
