"""SSDU hold-out split of the acquired k-space locations Omega into Theta (network input, DC) and Lambda (loss).

Yaman et al. 2020: ``Omega = Theta u Lambda`` disjoint, ``|Lambda| = round(rho |Omega|)``; a
centre block of ``centre = [rows, cols]`` locations around ``(H // 2, W // 2)`` always stays in Theta; the
Lambda locations are drawn without replacement from the rest of Omega either uniformly or with probabilities
``exp(-(dy^2 / 2 sy^2 + dx^2 / 2 sx^2))`` (``selection="gaussian"``, ``sy = std_fraction * H``,
``sx = std_fraction * W``), which favours the centre.

Modes: ``"points"`` splits individual k-space points (the mask becomes 2-D ``[1, H, W]``; any mask works);
``"lines"`` splits whole columns of a 1-D column mask (``[1, 1, W]``; only ``centre[1]`` is used).
Masks are float32 0/1 (as ``data.transforms``), a single sample's ``[1, 1, W]`` or ``[1, H, W]``; batches
``[B, 1, 1, W]`` / ``[B, 1, H, W]`` go through :func:`split_batch`. Draws use a numpy ``Generator``, so a split is
reproducible from its seed. Plain numpy/torch, no Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from mrlearn.errors import MrlearnError, input_error

SELECTIONS = ("uniform", "gaussian")
MODES = ("points", "lines")


class SplitError(MrlearnError):
    """A Theta/Lambda split is impossible for this mask (e.g. nothing outside the kept centre block)."""


@dataclass(frozen=True)
class SplitOptions:
    """How to split: ``rho`` = |Lambda| / |Omega| in (0, 1); ``selection``; ``centre`` [rows, cols]; ``mode``."""

    rho: float = 0.4
    selection: Literal["uniform", "gaussian"] = "uniform"
    centre: tuple[int, int] = (4, 4)
    std_fraction: float = 0.25
    mode: Literal["points", "lines"] = "points"

    def __post_init__(self) -> None:
        check_options(self.rho, self.selection, self.centre, self.std_fraction, self.mode)
        object.__setattr__(self, "centre", (int(self.centre[0]), int(self.centre[1])))


def check_options(rho: float, selection: str, centre: Sequence[int], std_fraction: float, mode: str,
                  where: str = "method") -> None:
    """One-line errors for impossible split options (``where`` names the config section)."""
    if not (isinstance(rho, (int, float)) and 0 < float(rho) < 1):
        raise input_error(f"{where}.rho", f"must be in (0, 1), got {rho!r}", "SSDU uses rho: 0.4")
    if selection not in SELECTIONS:
        raise input_error(f"{where}.selection", f"unknown value {selection!r}", f"choose one of: {', '.join(SELECTIONS)}")
    if mode not in MODES:
        raise input_error(f"{where}.split_mode", f"unknown value {mode!r}", f"choose one of: {', '.join(MODES)}")
    if len(centre) != 2 or min(int(c) for c in centre) < 0:
        raise input_error(f"{where}.centre", f"expected [rows, cols] >= 0, got {list(centre)!r}", "e.g. [4, 4]")
    if not std_fraction > 0:
        raise input_error(f"{where}.std_fraction", f"must be > 0, got {std_fraction!r}", "e.g. 0.25")


def centre_block(shape: tuple[int, int], centre: tuple[int, int]) -> np.ndarray:
    """Boolean ``[H, W]``: the ``centre`` rows x cols block around ``(H // 2, W // 2)`` (clipped to the matrix)."""
    h, w = shape
    ch, cw = min(int(centre[0]), h), min(int(centre[1]), w)
    block = np.zeros((h, w), dtype=bool)
    r0, c0 = h // 2 - ch // 2, w // 2 - cw // 2
    block[r0 : r0 + ch, c0 : c0 + cw] = True
    return block


def _weights(coords: np.ndarray, size: int, std_fraction: float) -> np.ndarray:
    d = (coords - size // 2) / max(std_fraction * size, 1e-12)
    return -0.5 * d * d


def _draw(candidates: np.ndarray, logw: np.ndarray | None, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct entries of ``candidates`` (uniform, or with probabilities ``exp(logw)``)."""
    if logw is None:
        return rng.choice(candidates, size=count, replace=False)
    p = np.exp(logw - logw.max())
    positive = np.count_nonzero(p > 0)
    if positive < count:  # far tails underflow to 0: give them the smallest positive weight
        p = np.where(p > 0, p, p[p > 0].min() if positive else 1.0)
    return rng.choice(candidates, size=count, replace=False, p=p / p.sum())


def lambda_count(omega: int, rho: float) -> int:
    """``|Lambda| = round(rho |Omega|)``, at least 1 when Omega is not empty."""
    return max(1, int(round(rho * omega))) if omega > 0 else 0


def ssdu_split(mask: torch.Tensor, shape: tuple[int, int], options: SplitOptions, rng: np.random.Generator,
               where: str = "mask") -> tuple[torch.Tensor, torch.Tensor]:
    """Split one sample's mask (``[1, 1, W]`` or ``[1, H, W]``, 0/1) into ``(theta, lam)`` float32 masks.

    ``points``: both ``[1, H, W]``; ``lines``: both ``[1, 1, W]``. ``theta + lam == omega`` (as a 2-D mask) and
    ``theta * lam == 0``. Raises :class:`SplitError` when Omega has no location outside the kept centre block.
    """
    h, w = int(shape[0]), int(shape[1])
    m = mask.detach().to("cpu", torch.float32)
    if options.mode == "lines":
        if m.shape[-2] != 1:
            raise input_error("method.split_mode", "'lines' needs a 1-D column mask but the mask is 2-D",
                              "use split_mode: points for 2-D (e.g. Poisson-disc) masks")
        omega = m.reshape(-1).numpy() > 0
        keep = centre_block((1, w), (1, options.centre[1]))[0]
        candidates = np.flatnonzero(omega & ~keep)
        logw = None if options.selection == "uniform" else _weights(candidates, w, options.std_fraction)
        units = int(omega.sum())
    else:
        omega = np.broadcast_to(m.reshape(-1, m.shape[-2], m.shape[-1])[0].numpy(), (h, w)) > 0
        keep = centre_block((h, w), options.centre)
        candidates = np.flatnonzero(omega & ~keep)
        if options.selection == "uniform":
            logw = None
        else:
            rows, cols = np.divmod(candidates, w)
            logw = _weights(rows, h, options.std_fraction) + _weights(cols, w, options.std_fraction)
        units = int(omega.sum())
    count = lambda_count(units, options.rho)
    if candidates.size == 0 or count == 0:
        raise SplitError(f"{where}: no acquired k-space location outside the kept centre block "
                         f"{list(options.centre)} ({units} acquired), so Lambda would be empty; "
                         "lower method.centre or use a mask that samples outside the centre")
    count = min(count, int(candidates.size))
    chosen = _draw(candidates, logw, count, rng)
    lam = np.zeros(omega.size, dtype=np.float32)
    lam[chosen] = 1.0
    lam = lam.reshape(omega.shape)
    theta = omega.astype(np.float32) - lam
    if options.mode == "lines":
        return torch.from_numpy(theta).reshape(1, 1, w), torch.from_numpy(lam).reshape(1, 1, w)
    return torch.from_numpy(theta).reshape(1, h, w), torch.from_numpy(lam).reshape(1, h, w)


def split_batch(mask: torch.Tensor, shape: tuple[int, int], options: SplitOptions,
                seeds: Sequence[Sequence[int] | int], names: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split every sample of ``mask`` ``[B, 1, 1|H, W]``; sample ``b`` draws from ``default_rng(seeds[b])``.

    Returns ``(theta, lam)`` ``[B, 1, H|1, W]`` on the mask's device. ``names`` label errors (``file[slice]``).
    """
    thetas, lams = [], []
    for b in range(mask.shape[0]):
        where = names[b] if names is not None else f"mask[{b}]"
        t, l_ = ssdu_split(mask[b], shape, options, np.random.default_rng(seeds[b]), where)
        thetas.append(t)
        lams.append(l_)
    return torch.stack(thetas).to(mask.device), torch.stack(lams).to(mask.device)


def as_2d(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A mask ``[..., 1|H, W]`` broadcast to ``[..., H, W]`` (float32 copy)."""
    return torch.broadcast_to(mask, (*mask.shape[:-2], int(shape[0]), int(shape[1]))).float().clone()
