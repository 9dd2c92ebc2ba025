"""Real-like IVIM series for tests and benchmarks: int16 storage with slope/intercept, no b = 0.

:func:`realistic_series` builds a ``[X, Y, Z, N]`` series the way a scanner exports it: a bright elliptic "cord"
of tissue (common IVIM, parameters drawn per voxel) in a dark background, Rician noise, then stored as int16
``raw`` with ``value = raw * slope + intercept`` (intercept < 0, so the background is negative once scaled, as in
real exports). b-values default to 11 values from 5 to 800 s/mm^2. Units as in :mod:`mrlearn.qmri.signal`.
:func:`corner_series` gives voxel signals of a spinal-cord protocol (lowest b 50) whose fits reach the degenerate
IVIM corners.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mrlearn.qmri.signal import get_model

REAL_BVALS = (5.0, 10.0, 20.0, 30.0, 50.0, 80.0, 100.0, 200.0, 400.0, 600.0, 800.0)
#: a 7 T spinal-cord protocol: no b = 0, lowest b 50 s/mm^2
CORD_BVALS = (50.0, 100.0, 150.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 1000.0)
TISSUE = {"f": (0.05, 0.3), "D": (0.4, 2.0), "Dstar": (10.0, 80.0)}


@dataclass
class Series:
    """``raw`` int16 ``[X, Y, Z, N]``, ``slope``/``intercept`` (value = raw * slope + intercept), b-values [N],
    the tissue mask ``[X, Y, Z]``, the true maps (S0 in scaled signal units) and the noise sd ``sigma``."""

    raw: np.ndarray
    slope: float
    intercept: float
    bvals: np.ndarray
    tissue: np.ndarray
    truth: dict[str, np.ndarray]
    sigma: float

    @property
    def data(self) -> np.ndarray:
        """The scaled series (float64), as a NIfTI reader returns it."""
        return self.raw.astype(np.float64) * self.slope + self.intercept

    def nifti(self, affine: np.ndarray | None = None):
        """A nibabel image holding ``raw`` with the scale and intercept in its header."""
        import nibabel as nib

        img = nib.Nifti1Image(self.raw, np.eye(4) if affine is None else affine)
        img.header.set_slope_inter(self.slope, self.intercept)
        return img


def realistic_series(shape: tuple[int, int, int] = (24, 20, 2), bvals=REAL_BVALS, s0: float = 800.0,
                     snr: float = 25.0, slope: float = 0.25, intercept: float = -60.0, seed: int = 0) -> Series:
    """Elliptic tissue region (about half the field) with S0 ``s0``, Rician noise sd ``s0 / snr``, int16 storage.

    ``snr`` is S0 / sigma; the background holds Rician noise of a zero signal shifted by the (negative) intercept,
    so once scaled it is mostly negative with some positive values, as in real exports.
    """
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    tissue2d = (x / 0.75) ** 2 + (y / 0.6) ** 2 <= 1.0
    tissue = np.repeat(tissue2d[:, :, None], shape[2], axis=2)
    truth = {"S0": np.where(tissue, s0 * rng.uniform(0.85, 1.15, shape), 0.0)}
    for k, (lo, hi) in TISSUE.items():
        truth[k] = np.where(tissue, rng.uniform(lo, hi, shape), 0.0)
    theta = torch.from_numpy(np.stack([truth[k] for k in ("S0", "f", "D", "Dstar")], -1).reshape(-1, 4))
    b = np.asarray(bvals, dtype=np.float64)
    fn, _ = get_model("ivim")
    clean = fn(theta, torch.from_numpy(b)).numpy().reshape(*shape, b.size)
    sigma = s0 / snr
    noisy = np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2)
    value = noisy + np.where(tissue, 0.0, intercept)[..., None]  # background offset by the intercept
    raw = np.clip(np.round((value - intercept) / slope), -32768, 32767).astype(np.int16)
    return Series(raw, slope, intercept, b, tissue, truth, sigma)


def corner_series(n: int = 120, seed: int = 0, snr: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Along-cord IVIM voxels at ``CORD_BVALS``: S0 0.9-1.1, small f (0-0.08), high D (1.5-2.8 um^2/ms), D* 5-30,
    Rician noise sd 1/snr, each voxel divided by its b = 50 signal: mono-exponential-looking decays whose fits reach
    the f = 0 / f = 1 corners and, without b = 0, the S0 -> large ridge. Returns (signals [n, 11], sigma [n] on
    that scale), float64."""
    g = torch.Generator().manual_seed(seed)

    def uni(a: float, b: float) -> torch.Tensor:
        return a + (b - a) * torch.rand(n, generator=g, dtype=torch.float64)

    theta = torch.stack([uni(0.9, 1.1), uni(0.0, 0.08), uni(1.5, 2.8), uni(5.0, 30.0)], -1)
    fn, _ = get_model("ivim")
    clean = fn(theta, torch.tensor(CORD_BVALS, dtype=torch.float64))
    s = 1.0 / snr
    noisy = torch.sqrt((clean + s * torch.randn(clean.shape, generator=g, dtype=torch.float64)) ** 2
                       + (s * torch.randn(clean.shape, generator=g, dtype=torch.float64)) ** 2)
    ref = noisy[:, 0]
    return noisy / ref[:, None], s / ref
