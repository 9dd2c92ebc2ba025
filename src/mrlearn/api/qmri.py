"""``mrlearn.fit_ivim``: the voxel-wise IVIM fit of :func:`mrlearn.qmri.fit.fit_voxels` on numpy or torch arrays."""

from __future__ import annotations

from typing import Any


def fit_ivim(signals: Any, bvals: Any, objective: str = "nlls", **options: Any) -> Any:
    """Fit IVIM to ``signals [V, N]`` at ``bvals [N]`` (s/mm^2); returns :class:`mrlearn.qmri.fit.FitResult`.

    ``objective`` ``nlls`` (default here) or ``mle`` (Rician, needs ``sigma``); other keywords as ``fit_voxels``.
    """
    import numpy as np
    import torch

    from mrlearn.qmri.fit import fit_voxels

    s = signals if torch.is_tensor(signals) else torch.as_tensor(np.asarray(signals, dtype=np.float64))
    b = bvals if torch.is_tensor(bvals) else torch.as_tensor(np.asarray(bvals, dtype=np.float64))
    return fit_voxels(s, b, model="ivim", objective=objective, **options)
