"""Fine structure: brain tissue fractions sharpened against random fields, so subjects are not template-smooth.

The MNI template's grey/white/CSF maps are *probabilities* averaged over many brains: every boundary is a wide
ramp and cortical folding is blurred away. A single head has crisp boundaries at individual positions. Per
subject, three Gaussian random fields ``n_t`` (one each for csf, gm, wm; unit variance) with power spectrum

    ``P(k) ~ (k^2 + k0^2)^(-beta / 2)``, ``k0 = 1 / 20 mm``, ``beta = TEXTURE_SLOPE``

(flat above 20 mm wavelength, where the deformation already varies the anatomy; a power law below it, down to the
grid's Nyquist wavelength) re-weight the three brain tissues at every point:

    ``f'_t = B w_t / sum_s w_s``,  ``w_t = f_t^GAMMA exp(SIGMA n_t)``,  ``B = f_csf + f_gm + f_wm``

``GAMMA > 1`` sharpens the template's ramps (a voxel at 70 % / 30 % becomes about 78 / 22 %); ``SIGMA`` moves each
boundary by a random, spatially correlated amount, folding it at all scales of the spectrum. The sum ``B`` (the
brain / CSF space) and the other tissues are unchanged, so head shape and skull stay those of the deformation.

How the values were chosen: the in-brain radial power spectrum of the template's slices follows a power law below
1/8 mm^-1 and then steepens by about 3.5 (its fine structure is averaged away); with ``beta = 3``, ``GAMMA = 1.5``
and ``SIGMA = 1.2`` a subject's steepens by 1.0-1.4 (T1- and PD-weighted, :func:`brain_spectrum_slopes`,
``benchmarks/population.py --spectrum``; figures in docs/data.md). With ``SIGMA = 1.2`` a difference of one
standard deviation between two tissues' fields scales their weight ratio by ``e^1.2 = 3.3``: enough to turn a
sharpened 78 / 22 voxel, so boundaries move by about a voxel where the fields differ by one standard deviation.
"""

from __future__ import annotations

import numpy as np

from mrlearn.data.simulate.deform import Grid
from mrlearn.data.simulate.tissue import TISSUE_INDEX

TEXTURE_TISSUES = ("csf", "gm", "wm")
TEXTURE_SLOPE = 3.0
TEXTURE_K0 = 1.0 / 20.0  # cycles per mm
GAMMA = 1.5
SIGMA = 1.2


def power_law_field(grid: Grid, rng: np.random.Generator, slope: float = TEXTURE_SLOPE,
                    k0: float = TEXTURE_K0) -> np.ndarray:
    """A Gaussian random field on ``grid`` (float32 ``[X, Y, Z]``, zero mean, unit variance) with power spectrum
    ``(k^2 + k0^2)^(-slope / 2)`` (``k`` in cycles per mm), made by filtering white noise in Fourier space."""
    freqs = [np.fft.fftfreq(n, d=grid.spacing_mm) for n in grid.shape[:-1]] + [np.fft.rfftfreq(grid.shape[-1], d=grid.spacing_mm)]
    kx, ky, kz = np.meshgrid(*freqs, indexing="ij", sparse=True)
    amplitude = (kx * kx + ky * ky + kz * kz + k0 * k0) ** (-slope / 4.0)
    spectrum = np.fft.rfftn(rng.standard_normal(grid.shape).astype(np.float32)) * amplitude
    field = np.fft.irfftn(spectrum, s=grid.shape, axes=(0, 1, 2)).astype(np.float32)
    field -= field.mean()
    field /= max(float(field.std()), 1e-12)
    return field


def texture_fields(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """The three fields ``[3, X, Y, Z]`` (csf, gm, wm) of one subject."""
    return np.stack([power_law_field(grid, rng) for _ in TEXTURE_TISSUES])


def sharpen(fractions: np.ndarray, fields: np.ndarray, gamma: float = GAMMA, sigma: float = SIGMA) -> np.ndarray:
    """Fractions ``[T, ...]`` with csf/gm/wm re-weighted by ``fields`` ``[3, ...]`` (see the module docstring)."""
    f = np.array(fractions, dtype=np.float32, copy=True)
    idx = [TISSUE_INDEX[t] for t in TEXTURE_TISSUES]
    brain = f[idx]
    total = brain.sum(axis=0)
    w = np.power(np.clip(brain, 0.0, 1.0), gamma) * np.exp(sigma * fields.astype(np.float32))
    norm = w.sum(axis=0)
    safe = np.where(norm > 0, norm, 1.0)
    f[idx] = np.where(norm > 0, total * w / safe, brain)
    return f


def brain_spectrum_slopes(images: list[np.ndarray], brain_masks: list[np.ndarray], pixel_mm: float,
                          split: float = 1.0 / 8.0) -> tuple[float, float]:
    """Log-log slopes of the radial 2-D power spectrum of the brain in ``images`` (each ``[H, W]``, its mask
    ``[H, W]`` bool) below and above ``split`` cycles/mm: the band 1/40 mm^-1 to the Nyquist frequency, 11
    logarithmic bins, spectra summed over the images. Each image is windowed to its brain (mask eroded by 3 pixels,
    smoothed by a 2-pixel Gaussian, mean removed) so the head outline does not dominate."""
    from scipy import ndimage

    h, w = images[0].shape
    ky, kx = np.meshgrid(np.fft.fftfreq(h, pixel_mm), np.fft.fftfreq(w, pixel_mm), indexing="ij")
    k = np.sqrt(kx * kx + ky * ky)
    edges = np.geomspace(1.0 / 40.0, min(0.26, 0.5 / pixel_mm), 12)
    centres = 0.5 * (edges[1:] + edges[:-1])
    power = np.zeros(len(centres))
    for image, mask in zip(images, brain_masks):
        window = ndimage.gaussian_filter(ndimage.binary_erosion(mask, iterations=3).astype(np.float64), 2.0)
        spec = np.abs(np.fft.fft2((image - image[mask].mean()) * window)) ** 2
        power += [spec[(k >= a) & (k < b)].mean() for a, b in zip(edges[:-1], edges[1:])]
    low, high = centres < split, centres >= split
    slope = [float(np.polyfit(np.log(centres[m]), np.log(power[m]), 1)[0]) for m in (low, high)]
    return slope[0], slope[1]
