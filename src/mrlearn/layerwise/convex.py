"""Convex reformulation of a two-layer ReLU block (Sahiner et al. ICLR 2021).

Notation (rows are pixels, ``n`` of them): ``Y [n, d]`` patch matrix (``d = C*k*k``), ``X [n, c]`` the target
of the block's non-skip branch (target minus block input), gates ``G [n, P]`` with ``G[:, i] = 1[Y h_i >= 0]``
for random filters ``h_i`` (the sign patterns ``D_i``). Losses are means over pixels:

  non-convex primal   1/(2n) || sum_j (Y u_j)_+ v_j^T - X ||^2 + beta/2 sum_j (||u_j||^2 + ||v_j||^2)
  convex ("relu")     1/(2n) || sum_i D_i Y (W_i - Z_i) - X ||^2 + beta sum_{i,o} (||w_io|| + ||z_io||)
                      s.t. (2 D_i - I) Y w_io >= 0 and (2 D_i - I) Y z_io >= 0
  gated relaxation    1/(2n) || sum_i D_i Y V_i - X ||^2 + beta sum_{i,o} ||v_io||     (no cone constraints)

with ``W_i, Z_i, V_i [d, c]`` and groups ``w_io`` = column ``o`` (one output channel). Each output channel
has its own neurons (their 1 x 1 weights are zero on the other channels), so every nonzero group is one ReLU
neuron: ``u = w / sqrt(||w||)`` and ``v = sqrt(||w||) e_o`` (``-sqrt(||z||) e_o`` for ``z``). At a feasible
point the recovered ReLU block has exactly the convex objective. The cone constraints are enforced by a
quadratic penalty ``rho/(2n) ||((I - 2 D_i) Y w)_+||^2`` with continuation on ``rho``; the remaining violation
shows up as the gap between the convex objective and the recovered block's objective, which is reported.
The solver is FISTA with restarts (:mod:`mrlearn.layerwise.fista`) on the whole (sub-sampled) patch matrix, on
the device of ``Y`` (random draws come from a CPU generator, so a seed gives the same filters on any device).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mrlearn.errors import input_error
from mrlearn.layerwise.fista import fista
from mrlearn.layerwise.patches import patch_matrix, pixel_matrix, sample_rows

VARIANTS = ("gated", "relu")


def sample_gates(Y: torch.Tensor, num_patterns: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random filters ``H [d, P]`` (standard normal) and their sign patterns ``G = 1[Y H >= 0]`` ``[n, P]``."""
    H = torch.randn(Y.shape[1], num_patterns, generator=generator, dtype=Y.dtype)
    return H, (Y @ H.to(Y.device) >= 0).to(Y.dtype)


def gated_apply(Y: torch.Tensor, G: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``sum_i D_i Y V_i`` for ``V [P, d, c]`` -> ``[n, c]``."""
    P, d, c = V.shape
    YV = (Y @ V.permute(1, 0, 2).reshape(d, P * c)).reshape(-1, P, c)
    return torch.einsum("np,npc->nc", G, YV)


def gated_adjoint(Y: torch.Tensor, G: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`gated_apply`: ``R [n, c]`` -> ``[P, d, c]`` with ``[i] = Y^T D_i R``."""
    n, P = G.shape
    c = R.shape[1]
    GR = (G.unsqueeze(2) * R.unsqueeze(1)).reshape(n, P * c)
    return (Y.T @ GR).reshape(-1, P, c).permute(1, 0, 2)


def group_norms(V: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each group (the ``d`` axis, second to last)."""
    return V.norm(dim=-2)


def group_prox(V: torch.Tensor, thresh: float) -> torch.Tensor:
    """Group soft-thresholding: each ``d``-vector shrunk by ``thresh`` in norm (zero when shorter)."""
    norms = group_norms(V).unsqueeze(-2)
    return V * torch.clamp(1.0 - thresh / torch.clamp(norms, min=1e-30), min=0.0)


def _power_norm2(apply, adjoint, shape, dtype, iters: int = 30, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> float:
    """Largest eigenvalue of ``adjoint(apply(.))`` by power iteration (start drawn on the CPU, run on ``device``)."""
    v = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    lam = 0.0
    for _ in range(iters):
        v = v / v.norm().clamp_min(1e-30)
        w = adjoint(apply(v))
        lam = float((v * w).sum())
        v = w
    return lam


@dataclass
class ConvexProblem:
    """One block's convex training problem (see the module docstring)."""

    Y: torch.Tensor  # [n, d]
    X: torch.Tensor  # [n, c]
    G: torch.Tensor  # [n, P]
    beta: float
    variant: str = "gated"
    H: torch.Tensor | None = None  # [d, P] the random filters that produced G (None when G was given directly)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise input_error("layerwise.convex.variant", f"unknown variant {self.variant!r}", f"use one of {', '.join(VARIANTS)}")
        if self.beta < 0:
            raise input_error("layerwise.convex.beta", f"must be >= 0, got {self.beta}", "use e.g. 1e-4")

    @property
    def n(self) -> int:
        return self.Y.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        P, (d, c) = self.G.shape[1], (self.Y.shape[1], self.X.shape[1])
        return (P, d, c) if self.variant == "gated" else (2, P, d, c)

    def predict(self, U: torch.Tensor) -> torch.Tensor:
        """Convex model output ``[n, c]`` (``U = V`` gated, ``U = stack(W, Z)`` relu)."""
        if self.variant == "gated":
            return gated_apply(self.Y, self.G, U)
        return gated_apply(self.Y, self.G, U[0] - U[1])

    def data_term(self, U: torch.Tensor) -> float:
        return 0.5 * float(((self.predict(U) - self.X) ** 2).sum()) / self.n

    def regulariser(self, U: torch.Tensor) -> float:
        return self.beta * float(group_norms(U).sum())

    def objective(self, U: torch.Tensor) -> float:
        """The convex objective (data term + group lasso; the cone penalty is not included)."""
        return self.data_term(U) + self.regulariser(U)

    def cone_violation(self, U: torch.Tensor) -> float:
        """``1/(2n) sum ||((I - 2 D_i) Y w)_+||^2`` over all w and z groups (0 when feasible; relu only)."""
        if self.variant == "gated":
            return 0.0
        return 0.5 * float((self._violation(U) ** 2).sum()) / self.n

    def _violation(self, U: torch.Tensor) -> torch.Tensor:
        S = (2.0 * self.G - 1.0).unsqueeze(-1)  # [n, P, 1]
        P, d, c = U.shape[1:]
        YU = (self.Y @ U.permute(2, 0, 1, 3).reshape(d, 2 * P * c)).reshape(-1, 2, P, c)
        return torch.relu(-S.unsqueeze(1) * YU)  # [n, 2, P, c]

    def smooth_value(self, U: torch.Tensor, rho: float = 0.0) -> float:
        """Value of :meth:`smooth` without the gradient."""
        value = self.data_term(U)
        if self.variant == "relu" and rho > 0:
            value += 0.5 * rho * float((self._violation(U) ** 2).sum()) / self.n
        return value

    def smooth(self, U: torch.Tensor, rho: float = 0.0) -> tuple[float, torch.Tensor]:
        """Value and gradient of data term (+ cone penalty with weight ``rho`` for the relu variant)."""
        R = self.predict(U) - self.X
        value = 0.5 * float((R * R).sum()) / self.n
        gV = gated_adjoint(self.Y, self.G, R) / self.n
        if self.variant == "gated":
            return value, gV
        grad = torch.stack((gV, -gV))
        if rho > 0:
            viol = self._violation(U)  # [n, 2, P, c]
            value += 0.5 * rho * float((viol * viol).sum()) / self.n
            S = (2.0 * self.G - 1.0).unsqueeze(1).unsqueeze(-1)
            back = (-S * viol).reshape(self.n, -1)  # d/d(YU)
            P, d, c = U.shape[1:]
            grad = grad + (rho / self.n) * (self.Y.T @ back).reshape(d, 2, P, c).permute(1, 2, 0, 3)
        return value, grad

    def lipschitz(self, rho: float = 0.0, generator: torch.Generator | None = None) -> float:
        """Upper estimate of the smooth part's gradient Lipschitz constant (power iteration, 10 % margin)."""
        P, d, c = self.G.shape[1], self.Y.shape[1], self.X.shape[1]
        lam = _power_norm2(lambda V: gated_apply(self.Y, self.G, V), lambda R: gated_adjoint(self.Y, self.G, R),
                           (P, d, c), self.Y.dtype, generator=generator, device=self.Y.device) / self.n
        if self.variant == "relu":
            lam *= 2.0
            if rho > 0:
                lam += rho * float(torch.linalg.matrix_norm(self.Y, ord=2)) ** 2 / self.n
        return 1.1 * lam


def recover_relu_weights(U: torch.Tensor, variant: str, in_channels: int, kernel_size: int,
                         tol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU block weights from a convex solution: ``g [m, C, k, k]``, ``f [c, m, 1, 1]`` (m = nonzero groups).

    Each group ``w`` with ``||w|| > tol`` gives a neuron ``u = w / sqrt(||w||)`` with output weight
    ``+sqrt(||w||)`` (``-sqrt(||z||)`` for z groups of the relu variant) on its own output channel. The weights
    are returned on the CPU.
    """
    U = U.detach().cpu()
    parts = [(U, 1.0)] if variant == "gated" else [(U[0], 1.0), (U[1], -1.0)]
    c = U.shape[-1]
    us, vs = [], []
    for V, sign in parts:
        norms = group_norms(V)  # [P, c]
        for i, o in (norms > tol).nonzero().tolist():
            s = float(norms[i, o]) ** 0.5
            us.append(V[i, :, o] / s)
            v = torch.zeros(c, dtype=V.dtype)
            v[o] = sign * s
            vs.append(v)
    if not us:  # all groups zero: one dead neuron keeps the block well formed (output = input)
        us, vs = [torch.zeros(U.shape[-2], dtype=U.dtype)], [torch.zeros(c, dtype=U.dtype)]
    g = torch.stack(us).reshape(len(us), in_channels, kernel_size, kernel_size)
    f = torch.stack(vs, dim=1).reshape(c, len(vs), 1, 1)
    return g, f


def relu_objective(Y: torch.Tensor, X: torch.Tensor, g: torch.Tensor, f: torch.Tensor, beta: float) -> float:
    """Non-convex primal objective of a ReLU block with weights ``g [m, ...]``, ``f [c, m, 1, 1]`` on patches."""
    U = g.reshape(g.shape[0], -1).to(Y.device, Y.dtype)
    Fm = f.reshape(f.shape[0], -1).to(Y.device, Y.dtype)
    pred = torch.relu(Y @ U.T) @ Fm.T
    data = 0.5 * float(((pred - X) ** 2).sum()) / Y.shape[0]
    return data + 0.5 * beta * (float((U * U).sum()) + float((Fm * Fm).sum()))


@dataclass
class ConvexBlockResult:
    g_weight: torch.Tensor
    f_weight: torch.Tensor
    convex_objective: float  # convex objective at the solution (no penalty)
    relu_objective: float  # non-convex objective of the recovered ReLU block on the same patches
    cone_violation: float
    history: list[float] = field(default_factory=list)
    restarts: int = 0
    iterations: int = 0
    num_neurons: int = 0
    converged: bool = False  # every FISTA run met its tolerance (not stopped by max_iter)
    variant: str = "gated"
    solution: torch.Tensor | None = None  # U: V [P, d, c] (gated) or stack(W, Z) [2, P, d, c] (relu)
    gate_filters: torch.Tensor | None = None  # [P, C, k, k] the random filters of the sign patterns

    def relu_block(self):
        """The recovered ReLU :class:`~mrlearn.layerwise.blocks.TwoLayerBlock`."""
        from mrlearn.layerwise.blocks import TwoLayerBlock

        block = TwoLayerBlock(1, self.g_weight.shape[-1], self.g_weight.shape[1])
        block.set_weights(self.g_weight, self.f_weight)
        return block

    def gated_block(self):
        """The gated-ReLU :class:`~mrlearn.layerwise.blocks.GatedBlock` of a gated solution (exact objective)."""
        from mrlearn.layerwise.blocks import GatedBlock

        if self.variant != "gated" or self.solution is None or self.gate_filters is None:
            raise ValueError("gated_block needs a gated-variant solution")
        P, C, k, _ = self.gate_filters.shape
        c = self.solution.shape[-1]
        return GatedBlock(self.gate_filters, self.solution.permute(0, 2, 1).reshape(P, c, C, k, k))

    def block(self):
        """The block to stack: gated block for the gated variant, recovered ReLU block for the relu variant."""
        return self.gated_block() if self.variant == "gated" else self.relu_block()

    @property
    def gap(self) -> float:
        """``relu_objective - convex_objective`` (0 at a feasible point of the relu variant)."""
        return self.relu_objective - self.convex_objective


@dataclass
class ConvexSolve:
    """A solve: solution ``U``, objective per accepted iterate, restarts, iterations used, tolerance met."""

    U: torch.Tensor
    history: list[float]
    restarts: int
    iterations: int
    converged: bool


def solve_convex_report(problem: ConvexProblem, max_iter: int = 5000, tol: float = 1e-6,
                        rhos: tuple[float, ...] = (10.0, 100.0, 1000.0), U0: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> ConvexSolve:
    """Solve ``problem`` by FISTA to the relative tolerance ``tol`` (``max_iter``: safety cap per FISTA run).

    Relu variant: one warm-started FISTA run per penalty weight in ``rhos``. ``history`` holds the objective of
    every accepted iterate (smooth part including the current penalty, plus the group lasso), monotone within
    each run; ``converged`` is True when every run stopped on its tolerance rather than on ``max_iter``.
    """
    U = torch.zeros(problem.shape, dtype=problem.Y.dtype, device=problem.Y.device) if U0 is None else U0.clone()
    history, restarts, iterations, converged = [], 0, 0, True
    for rho in ((0.0,) if problem.variant == "gated" else rhos):
        res = fista(lambda V, r=rho: problem.smooth(V, r), lambda V, t: group_prox(V, t * problem.beta),
                    problem.regulariser, U, problem.lipschitz(rho, generator), max_iter=max_iter, tol=tol,
                    value=lambda V, r=rho: problem.smooth_value(V, r))
        U, restarts, iterations = res.x, restarts + res.restarts, iterations + res.iterations
        converged = converged and res.converged
        history.extend(res.history)
    return ConvexSolve(U, history, restarts, iterations, converged)


def solve_convex(problem: ConvexProblem, max_iter: int = 5000, tol: float = 1e-6,
                 rhos: tuple[float, ...] = (10.0, 100.0, 1000.0), U0: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
    """:func:`solve_convex_report` as a tuple ``(U, history, restarts, iterations)``."""
    r = solve_convex_report(problem, max_iter, tol, rhos, U0, generator)
    return r.U, r.history, r.restarts, r.iterations


def block_problem(x_in: torch.Tensor, target: torch.Tensor, kernel_size: int, num_patterns: int, beta: float,
                  variant: str = "gated", max_patches: int | None = 20000,
                  generator: torch.Generator | None = None) -> ConvexProblem:
    """The convex problem of one block: patches of ``x_in [B, C, H, W]``, residual target ``target - x_in``.

    ``max_patches`` random pixels (rows) are kept to bound memory (None: all pixels).
    """
    if num_patterns < 1:
        raise input_error("layerwise.convex.num_patterns", f"must be >= 1, got {num_patterns}", "use e.g. 128")
    Y = patch_matrix(x_in, kernel_size)
    X = pixel_matrix(target - x_in)
    rows = sample_rows(Y.shape[0], max_patches, generator)
    if rows is not None:
        Y, X = Y[rows], X[rows]
    H, G = sample_gates(Y, num_patterns, generator)
    return ConvexProblem(Y=Y, X=X, G=G, beta=beta, variant=variant, H=H)


def solve_block(x_in: torch.Tensor, target: torch.Tensor, kernel_size: int = 7, num_patterns: int = 128,
                beta: float = 1e-4, variant: str = "gated", max_patches: int | None = 20000, max_iter: int = 5000,
                tol: float = 1e-6, rhos: tuple[float, ...] = (10.0, 100.0, 1000.0), seed: int = 0) -> ConvexBlockResult:
    """Train one two-layer block convexly: build the problem, solve by FISTA, recover the ReLU weights.

    ``x_in``, ``target``: ``[B, C, H, W]`` real (2-channel images); deterministic for a given ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    x_in, target = x_in.detach().to(torch.float32).cpu(), target.detach().to(torch.float32).cpu()
    problem = block_problem(x_in, target, kernel_size, num_patterns, beta, variant, max_patches, gen)
    sol = solve_convex_report(problem, max_iter, tol, rhos, generator=gen)
    U = sol.U
    g, f = recover_relu_weights(U, variant, x_in.shape[1], kernel_size)
    return ConvexBlockResult(
        g_weight=g, f_weight=f, convex_objective=problem.objective(U),
        relu_objective=relu_objective(problem.Y, problem.X, g, f, beta), cone_violation=problem.cone_violation(U),
        history=sol.history, restarts=sol.restarts, iterations=sol.iterations, num_neurons=int(g.shape[0]),
        variant=variant, converged=sol.converged, solution=U, gate_filters=problem.H.T.reshape(-1, x_in.shape[1], kernel_size, kernel_size))
