"""How an iterative classical solver stopped, and the record a study shows for it.

The solvers (:func:`~mrlearn.recon.cg_sense.cg_sense`, :func:`~mrlearn.recon.cs.cs_l1_wavelet`,
:func:`~mrlearn.recon.tv.tv_recon`) fill an optional ``info`` dict per call: ``iterations``, ``max_iter``, ``tol``,
``tolerance_met`` and their stopping quantity (``relative_change`` of the iterate, or CG's ``relative_residual``).
:func:`solver_record` turns the infos of every batch a reference reconstruction solved into the convergence fields
a trained run has (``steps``, ``stopped_by``, ``converged``), so a study marks a classical row that stopped at its
iteration cap as not converged instead of passing it off as the method's minimiser.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

#: ``stopped_by`` of a classical solver: its tolerance was met, or its iteration cap stopped it
SOLVER_STOPS = ("tolerance", "max_iter")


def relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """``max_b ||new_b - old_b|| / ||new_b||`` over the batch axis (the plain difference where ``new_b`` is 0)."""
    diff = torch.linalg.vector_norm((new - old).flatten(1), dim=1)
    norm = torch.linalg.vector_norm(new.flatten(1), dim=1)
    ratio = torch.where(norm > 0, diff / norm.clamp_min(torch.finfo(norm.dtype).tiny), diff)
    return float(ratio.max()) if ratio.numel() else 0.0


def solver_record(infos: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Convergence fields of a classical reconstruction from its solver ``infos`` (None when there are none).

    ``steps``: the most iterations any batch took; ``stopped_by``: ``tolerance`` when every batch met its
    tolerance, else ``max_iter``; ``converged``: the same as a bool; ``monitor``/``best_score``: the stopping
    quantity and its largest final value; ``solver_batches``: how many solves.
    """
    infos = [i for i in infos if i]
    if not infos:
        return None
    met = all(bool(i.get("tolerance_met")) for i in infos)
    quantity = "relative_residual" if "relative_residual" in infos[0] else "relative_change"
    worst = max(float(i.get(quantity, float("nan"))) for i in infos)
    return {"steps": max(int(i.get("iterations", 0)) for i in infos), "best_step": None,
            "stopped_by": SOLVER_STOPS[0] if met else SOLVER_STOPS[1], "converged": met, "monitor": quantity,
            "best_score": worst, "max_iter": int(infos[0].get("max_iter", 0)), "tol": float(infos[0].get("tol", 0.0)),
            "solver_batches": len(infos)}
