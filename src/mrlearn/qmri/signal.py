"""Signal models for quantitative MRI: IVIM (two conventions), mono-exponential ADC and T2 decay.

Units and conventions
- b-values in s/mm^2; diffusion coefficients D and D* in um^2/ms (= 1e-3 mm^2/s). The exponent is made
  dimensionless as ``b * D * 1e-3`` (s/mm^2 * 1e-3 mm^2/s). Echo times TE and T2 both in ms.
- Parameters are a tensor ``[..., P]`` whose last axis follows ``ParamSpec.names`` of the model; a protocol is
  a 1-D tensor ``[N]`` of b-values (or echo times). Signals come out as ``[..., N]``.
- ``ivim`` (the common form): S = S0 [f exp(-b D*) + (1 - f) exp(-b D)].
- ``ivim_additive`` (Epstein et al. code): S = S0 [f exp(-b (D + D*)) + (1 - f) exp(-b D)].
- ``adc``: S = S0 exp(-b ADC);  ``t2``: S = S0 exp(-TE / T2).
Noise: sigma = S0_scale / SNR with S0_scale = 1 (the signal scale of the simulations).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mrlearn.errors import input_error
from mrlearn.io import read_text

B_SCALE = 1e-3  # s/mm^2 * um^2/ms -> dimensionless


@dataclass(frozen=True)
class ParamSpec:
    """Names, units and default fit bounds of one signal model's parameters."""

    names: tuple[str, ...]
    units: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]


def ivim(params: torch.Tensor, bvals: torch.Tensor) -> torch.Tensor:
    """Common IVIM: S0 [f e^{-b D*} + (1-f) e^{-b D}]; params [..., 4] = (S0, f, D, D*), D's in um^2/ms."""
    s0, f, d, dstar = params.unbind(-1)
    b = bvals * B_SCALE
    return s0[..., None] * (f[..., None] * torch.exp(-b * dstar[..., None])
                            + (1 - f[..., None]) * torch.exp(-b * d[..., None]))


def ivim_additive(params: torch.Tensor, bvals: torch.Tensor) -> torch.Tensor:
    """Epstein-code IVIM: S0 [f e^{-b (D + D*)} + (1-f) e^{-b D}]; params [..., 4] = (S0, f, D, D*)."""
    s0, f, d, dstar = params.unbind(-1)
    b = bvals * B_SCALE
    slow = torch.exp(-b * d[..., None])
    return s0[..., None] * slow * (f[..., None] * torch.exp(-b * dstar[..., None]) + (1 - f[..., None]))


def adc(params: torch.Tensor, bvals: torch.Tensor) -> torch.Tensor:
    """Mono-exponential diffusion: S0 e^{-b ADC}; params [..., 2] = (S0, ADC in um^2/ms)."""
    s0, d = params.unbind(-1)
    return s0[..., None] * torch.exp(-bvals * B_SCALE * d[..., None])


def t2(params: torch.Tensor, echo_times: torch.Tensor) -> torch.Tensor:
    """T2 decay: S0 e^{-TE / T2}; params [..., 2] = (S0, T2 in ms); echo times in ms."""
    s0, t2v = params.unbind(-1)
    return s0[..., None] * torch.exp(-echo_times / t2v[..., None].clamp_min(1e-6))


_IVIM_SPEC = ParamSpec(("S0", "f", "D", "Dstar"), ("a.u.", "fraction", "um^2/ms", "um^2/ms"),
                       (0.0, 0.0, 0.0, 0.0), (2.0, 1.0, 5.0, 300.0))

MODELS: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ParamSpec]] = {
    "ivim": (ivim, ParamSpec(("S0", "f", "D", "Dstar"), _IVIM_SPEC.units, (0.0, 0.0, 0.0, 2.0), _IVIM_SPEC.upper)),
    "ivim_additive": (ivim_additive, _IVIM_SPEC),
    "adc": (adc, ParamSpec(("S0", "ADC"), ("a.u.", "um^2/ms"), (0.0, 0.0), (2.0, 5.0))),
    "t2": (t2, ParamSpec(("S0", "T2"), ("a.u.", "ms"), (0.0, 1.0), (2.0, 2000.0))),
}


def get_model(name: str, where: str = "model") -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ParamSpec]:
    """Return ``(function, ParamSpec)`` for a model name; unknown names raise MrlearnError."""
    if name not in MODELS:
        raise input_error(where, f"unknown signal model {name!r}", f"use one of {', '.join(MODELS)}")
    return MODELS[name]


def add_noise(signal: torch.Tensor, snr: float, kind: str = "rician",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Add noise with sigma = 1 / SNR (signal scale S0 = 1).

    ``rician``: |S + n1 + i n2| with n1, n2 ~ N(0, sigma^2); ``gaussian``: S + n1.
    """
    if snr <= 0:
        raise input_error("snr", f"SNR must be positive, got {snr}", "give a value such as 15 or 30")
    sigma = 1.0 / float(snr)
    n1 = torch.randn(signal.shape, generator=generator, dtype=signal.dtype, device=signal.device) * sigma
    if kind == "gaussian":
        return signal + n1
    if kind != "rician":
        raise input_error("noise", f"unknown noise kind {kind!r}", "use 'rician' or 'gaussian'")
    n2 = torch.randn(signal.shape, generator=generator, dtype=signal.dtype, device=signal.device) * sigma
    return torch.sqrt((signal + n1) ** 2 + n2 ** 2)


def load_protocol(source: str | Path | Sequence[float], where: str = "protocol") -> torch.Tensor:
    """A protocol (b-values in s/mm^2 or echo times in ms) from a list or a text file of numbers.

    The text file may hold the values on one line or several (FSL ``.bval`` style), separated by spaces,
    commas or new lines. Returns float64 ``[N]``.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise input_error(path, "protocol file not found", "give a text file of b-values (e.g. 'b.txt')")
        text = read_text(path, "b-values").replace(",", " ")
        try:
            values = [float(tok) for tok in text.split()]
        except ValueError:
            raise input_error(path, "contains something that is not a number", "list b-values separated by spaces") from None
        where = str(path)
    else:
        try:
            values = [float(v) for v in source]
        except (TypeError, ValueError):
            raise input_error(where, "must be a list of numbers", "e.g. [0, 10, 20, 50, 100, 200, 400, 800]") from None
    arr = np.asarray(values, dtype=np.float64)
    if arr.size < 2:
        raise input_error(where, f"needs at least 2 values, got {arr.size}", "list every b-value (or echo time)")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise input_error(where, "values must be finite and non-negative", "check the b-values")
    return torch.from_numpy(arr)


def sample_uniform(ranges: dict[str, Sequence[float]], names: Sequence[str], n: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``[n, P]`` parameters uniformly within ``ranges[name] = (lo, hi)`` (float64)."""
    lo = torch.tensor([float(ranges[k][0]) for k in names], dtype=torch.float64)
    hi = torch.tensor([float(ranges[k][1]) for k in names], dtype=torch.float64)
    u = torch.rand((n, len(names)), generator=generator, dtype=torch.float64)
    return lo + (hi - lo) * u


def _sym(h: torch.Tensor, i: int, j: int, v: torch.Tensor) -> None:
    h[..., i, j] = v
    h[..., j, i] = v


def model_derivatives(name: str, params: torch.Tensor, bvals: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Signal ``[V, N]``, Jacobian ``[V, N, P]`` and Hessian ``[V, N, P, P]`` in closed form (params ``[V, P]``)."""
    fn, spec = get_model(name)
    p = params[:, None, :]
    v, n, k = params.shape[0], bvals.numel(), len(spec.names)
    jac = params.new_zeros((v, n, k))
    hess = params.new_zeros((v, n, k, k))
    if name in ("ivim", "ivim_additive"):
        s0, f, d, ds = p.unbind(-1)
        beta = bvals * B_SCALE
        e = torch.exp(-beta * d)
        fast = torch.exp(-beta * (ds + d)) if name == "ivim_additive" else torch.exp(-beta * ds)
        u = f * fast + (1 - f) * e
        sig = s0 * u
        jac[..., 0] = u
        jac[..., 1] = s0 * (fast - e)
        _sym(hess, 0, 1, fast - e)
        if name == "ivim":
            jac[..., 2] = -s0 * (1 - f) * beta * e
            jac[..., 3] = -s0 * f * beta * fast
            _sym(hess, 0, 2, -(1 - f) * beta * e)
            _sym(hess, 0, 3, -f * beta * fast)
            _sym(hess, 1, 2, s0 * beta * e)
            _sym(hess, 1, 3, -s0 * beta * fast)
            hess[..., 2, 2] = s0 * (1 - f) * beta ** 2 * e
            hess[..., 3, 3] = s0 * f * beta ** 2 * fast
        else:
            jac[..., 2] = -s0 * beta * u
            jac[..., 3] = -s0 * beta * f * fast
            _sym(hess, 0, 2, -beta * u)
            _sym(hess, 0, 3, -beta * f * fast)
            _sym(hess, 1, 2, -s0 * beta * (fast - e))
            _sym(hess, 1, 3, -s0 * beta * fast)
            hess[..., 2, 2] = s0 * beta ** 2 * u
            _sym(hess, 2, 3, s0 * beta ** 2 * f * fast)
            hess[..., 3, 3] = s0 * beta ** 2 * f * fast
        return sig, jac, hess
    s0, rate = p.unbind(-1)
    if name == "adc":
        beta = bvals * B_SCALE
        e = torch.exp(-beta * rate)
        jac[..., 0], jac[..., 1] = e, -s0 * beta * e
        _sym(hess, 0, 1, -beta * e)
        hess[..., 1, 1] = s0 * beta ** 2 * e
        return s0 * e, jac, hess
    t2v = rate.clamp_min(1e-6)
    e = torch.exp(-bvals / t2v)
    g = e * bvals / t2v ** 2
    jac[..., 0], jac[..., 1] = e, s0 * g
    _sym(hess, 0, 1, g)
    hess[..., 1, 1] = s0 * e * (bvals ** 2 / t2v ** 4 - 2 * bvals / t2v ** 3)
    return s0 * e, jac, hess
