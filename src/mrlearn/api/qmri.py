"""``mrlearn.fit_ivim``: the voxel-wise IVIM fit of :func:`mrlearn.qmri.fit.fit_voxels` on numpy or torch arrays,
with the input checks of ``mrlearn qmri fit`` (b-value units and count, finite sigma, bad voxels)."""

from __future__ import annotations

from typing import Any


def fit_ivim(signals: Any, bvals: Any, objective: str = "nlls", bad_voxels: str = "skip", **options: Any) -> Any:
    """Fit IVIM to ``signals [V, N]`` at ``bvals [N]`` (s/mm^2); returns :class:`mrlearn.qmri.fit.FitResult`.

    ``objective`` ``nlls`` (default here) or ``mle`` (Rician, needs ``sigma``); other keywords as ``fit_voxels``.
    Voxels that cannot be fitted (a NaN / inf value, a negative value, no positive signal at the lowest b: codes of
    :data:`mrlearn.qmri.voxels.BAD_CODES` in ``result.bad``) get NaN parameters and ``converged`` False
    (``bad_voxels="skip"``), or make the call fail with one line (``"error"``); the others are fitted as usual.
    """
    import numpy as np
    import torch

    from mrlearn.errors import input_error
    from mrlearn.qmri.fit import FitResult, fit_voxels
    from mrlearn.qmri.voxels import BAD_CODES, bad_voxel_codes, check_bvalue_units

    if bad_voxels not in ("skip", "error"):
        raise input_error("bad_voxels", f"unknown choice {bad_voxels!r}", "use 'skip' or 'error'")
    if signals is None or bvals is None:
        raise input_error("fit_ivim", "signals and bvals are required", "pass signals [V, N] and bvals [N]")
    s = (signals.detach().cpu() if torch.is_tensor(signals) else torch.as_tensor(np.asarray(signals, dtype=np.float64)))
    b = np.asarray(bvals.detach().cpu() if torch.is_tensor(bvals) else bvals, dtype=np.float64)
    if b.ndim != 1 or b.size == 0:
        raise input_error("bvals", f"expected one b-value per measurement [N], got shape {b.shape}", "pass a 1-D array")
    if not np.isfinite(b).all() or (b < 0).any():
        raise input_error("bvals", "b-values must be finite and >= 0", "check the b-value list")
    check_bvalue_units(b, "bvals")
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] != b.size:
        raise input_error("signals", f"expected [V, {b.size}] signals (V >= 1), got {tuple(s.shape)}",
                          "give one row per voxel and one signal per b-value")
    sigma = options.get("sigma")
    if sigma is not None and not bool(torch.isfinite(torch.as_tensor(sigma, dtype=torch.float64)).all()):
        raise input_error("sigma", f"must be finite, got {sigma!r}", "give the noise standard deviation")
    code = bad_voxel_codes(s.numpy(), b)
    if code.any() and bad_voxels == "error":
        first = int(np.flatnonzero(code)[0])
        raise input_error("signals", f"{int((code > 0).sum())} voxel(s) cannot be fitted (voxel {first}: "
                          f"{BAD_CODES[int(code[first])]})", "remove them, or pass bad_voxels='skip'")
    good = torch.as_tensor(code == 0)
    if not bool(good.any()):
        raise input_error("signals", "no voxel can be fitted (each has NaN, negative or no signal)", "check the data")
    opts = dict(options)
    if torch.is_tensor(sigma) and sigma.ndim == 1 and sigma.numel() == s.shape[0]:
        opts["sigma"] = sigma[good]
    fit = fit_voxels(s[good], torch.as_tensor(b), model="ivim", objective=objective, **opts)
    if bool(good.all()):
        fit.bad = torch.as_tensor(code)
        return fit

    def spread(values: torch.Tensor | None, fill: Any) -> torch.Tensor | None:
        if values is None:
            return None
        out = torch.full((s.shape[0], *values.shape[1:]), fill, dtype=values.dtype)
        out[good] = values
        return out

    return FitResult(params=spread(fit.params, float("nan")), objective=spread(fit.objective, float("nan")),
                     converged=spread(fit.converged, False), iterations=fit.iterations, names=fit.names,
                     at_lower=spread(fit.at_lower, False), at_upper=spread(fit.at_upper, False), bounds=fit.bounds,
                     bad=torch.as_tensor(code))
