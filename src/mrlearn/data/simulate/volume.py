"""Simulate one volume: tissue fractions -> contrast -> smooth phase -> coils -> k-space with noise -> target.

Pipeline for a slab of S slices on the k-space grid ``(H, W)`` (``H = 2 h`` with readout oversampling, the
extra rows being real anatomy of a twice-as-long readout field of view):

1. magnitude ``m = b sum_t f_t S_t`` (:mod:`contrasts`, with the subject's tissue parameters), fractions sampled
   from the subject's anatomy on the slab grid, ``b`` the subject's smooth receive bias (:mod:`subject`);
2. image ``x = m exp(i phi)`` with a smooth random phase ``phi``: a random quadratic polynomial of the in-plane
   position and linear in the slice position (coefficients ~ N(0, 1) rad at the edge of the field of view);
3. coil images ``x_c = s_c x`` with :func:`mrlearn.physics.coils.simulate_coil_maps` (``normalize="mean"``;
   drawn once per subject, so every contrast of a subject sees the same coils, as in one session);
   single-coil: ``x_1 = rss(s) x`` (an emulated single coil that keeps the coil shading);
4. k-space ``y_c = F x_c + n_c`` with the centered orthonormal FFT and complex white Gaussian noise,
   ``E|n|^2 = sigma^2`` (real and imaginary parts each ``sigma / sqrt 2``), the same for every coil and sample.
   ``sigma = mu / snr`` where ``mu`` is the mean of the noiseless RSS image (single-coil: ``|x_1|``) over the
   object (pixels whose tissue fractions sum to > 0.5, all slices). With the orthonormal FFT, ``sigma`` is
   also the noise standard deviation of each coil image pixel;
5. target: RSS of ``F^H y`` (noise included; single-coil: the magnitude), centre-cropped to ``(h, w)``, computed
   from the complex64 k-space that is stored; the noiseless reference is the same computed from ``F x_c`` (no noise).

Steps 3-5 are :func:`acquire`, public so that user images (``mrlearn simulate --from-images``) go through the
same coil, noise and target model as the embedded dataset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mrlearn.data.simulate.contrasts import Protocol, tissue_signals
from mrlearn.data.simulate.tissue import TISSUES, Tissue
from mrlearn.physics.coils import simulate_coil_maps

_AXES = (-2, -1)


@dataclass
class SimulatedVolume:
    """One simulated volume. kspace complex64 ``[S, C, H, W]`` (``[S, H, W]`` single-coil); target float32
    ``[S, h, w]``; sens_maps complex64 ``[S, C, H, W]`` (the maps used; ``[S, 1, H, W]`` RSS shading when
    single-coil); object_mask bool ``[S, H, W]``; noise_std the per-sample sigma; signal_mean mu; clean_kspace the
    noiseless coil k-space ``[S, C, H, W]`` (when asked for); target_noiseless float32 ``[S, h, w]`` the target
    computed from the noiseless k-space."""

    kspace: np.ndarray
    target: np.ndarray
    sens_maps: np.ndarray
    object_mask: np.ndarray
    noise_std: float
    signal_mean: float
    clean_kspace: np.ndarray | None = None
    target_noiseless: np.ndarray | None = None


def fft2c_np(image: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`mrlearn.physics.fft.fft2c` (centered, orthonormal, last two axes), dtype kept.

    The simulator uses numpy: on a busy 2-core machine torch's thread pool makes small tensor ops ~1000x slower.
    """
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=_AXES), norm="ortho"), axes=_AXES)


def ifft2c_np(kspace: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`mrlearn.physics.fft.ifft2c`."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=_AXES), norm="ortho"), axes=_AXES)


def center_crop_np(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop the last two axes from ``(H - h) // 2``, ``(W - w) // 2`` (fastMRI), as ``physics.complex.center_crop``."""
    h, w = x.shape[-2:]
    ch, cw = min(shape[0], h), min(shape[1], w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]


def rss_np(coil_images: np.ndarray) -> np.ndarray:
    """Root sum of squares over the coil axis (``-3``) of complex coil images ``[..., C, H, W]``."""
    return np.sqrt((coil_images.real ** 2 + coil_images.imag ** 2).sum(axis=-3))


def target_from_kspace(kspace: np.ndarray, recon_hw: tuple[int, int]) -> np.ndarray:
    """fastMRI target from fully sampled k-space: RSS over coils of ``F^H y`` (``[S, C, H, W]``) or the magnitude
    (``[S, H, W]``), centre-cropped to ``recon_hw``; float32 ``[S, h, w]``."""
    img = ifft2c_np(np.asarray(kspace, dtype=np.complex64))
    mag = rss_np(img) if img.ndim == 4 else np.abs(img)
    return np.ascontiguousarray(center_crop_np(mag, recon_hw), dtype=np.float32)


def smooth_phase(shape: tuple[int, int], positions_mm: np.ndarray, pixel_mm: float, half_fov_mm: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Random smooth phase ``[S, H, W]`` (radians): quadratic in-plane, linear along the slab."""
    h, w = shape
    u = ((np.arange(h) - h // 2) * pixel_mm / half_fov_mm)[:, None]
    v = ((np.arange(w) - w // 2) * pixel_mm / half_fov_mm)[None, :]
    c = rng.normal(0.0, 1.0, 7)
    z = (np.asarray(positions_mm) - np.mean(positions_mm)) / half_fov_mm
    plane = c[0] * math.pi + c[1] * u + c[2] * v + 0.5 * (c[3] * u * u + c[4] * v * v + c[5] * u * v)
    return (plane[None] + c[6] * z[:, None, None]).astype(np.float32)


def coil_maps(kspace_hw: tuple[int, int], recon_hw: tuple[int, int], pixel_mm: float, coils: int, z_mm: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """Coil maps ``[S, C, H, W]`` (complex64) of a ring of ``coils`` at 0.55 x the recon field of view, slices at
    ``z_mm`` from the slab centre; placement (rotation, radii, heights, phases) drawn from ``rng``."""
    ring = (0.55 * recon_hw[0] * pixel_mm, 0.55 * recon_hw[1] * pixel_mm)
    return simulate_coil_maps(kspace_hw, coils, pixel_mm=pixel_mm, ring_radii_mm=ring, z_mm=z_mm, rng=rng)


def acquire(image: np.ndarray, object_mask: np.ndarray, *, recon_hw: tuple[int, int], pixel_mm: float, coils: int,
            snr: float, single_coil: bool, z_mm: np.ndarray, rng: np.random.Generator,
            keep_clean: bool = False, maps: np.ndarray | None = None) -> SimulatedVolume:
    """Steps 3-5 of the module docstring for a complex image ``[S, H, W]`` (complex64, on the k-space grid
    ``(H, W)``) whose object is ``object_mask`` ``[S, H, W]``: coil maps (``maps`` ``[S, C, H, W]``, else drawn by
    :func:`coil_maps` from ``rng``), noise of ``sigma = mu / snr`` (drawn from ``rng``) and the targets."""
    kspace_hw = tuple(int(v) for v in image.shape[-2:])
    if maps is None:
        maps = coil_maps(kspace_hw, recon_hw, pixel_mm, coils, z_mm, rng)
    if single_coil:
        maps = np.sqrt((np.abs(maps) ** 2).sum(axis=1, keepdims=True)).astype(np.complex64)
    coil_images = maps * image[:, None]  # [S, C, H, W] complex64
    clean = fft2c_np(coil_images).astype(np.complex64)
    mu = float(rss_np(coil_images)[object_mask].mean()) if object_mask.any() else 0.0
    sigma = 0.0 if math.isinf(snr) else mu / snr
    noise = rng.standard_normal(tuple(clean.shape) + (2,), dtype=np.float32)
    noise *= np.float32(sigma / math.sqrt(2.0))
    kspace = clean + noise.view(np.complex64)[..., 0]
    if single_coil:
        kspace = kspace[:, 0]
    target = target_from_kspace(kspace, recon_hw)
    noiseless = target_from_kspace(clean[:, 0] if single_coil else clean, recon_hw)
    return SimulatedVolume(kspace=kspace, target=target, sens_maps=maps, object_mask=object_mask,
                           noise_std=sigma, signal_mean=mu, clean_kspace=clean if keep_clean else None,
                           target_noiseless=noiseless)


def simulate_volume(fractions: np.ndarray, protocol: Protocol, *, tissues: Sequence[Tissue] = TISSUES,
                    bias: np.ndarray | None = None, positions_mm: Sequence[float], recon_hw: tuple[int, int],
                    pixel_mm: float, coils: int, snr: float, single_coil: bool, rng: np.random.Generator,
                    maps: np.ndarray | None = None, keep_clean: bool = False) -> SimulatedVolume:
    """Simulate one acquisition of tissue ``fractions`` ``[T, S, H, W]`` (on the k-space grid) with ``protocol``
    and the subject's ``tissues``, times the receive ``bias`` ``[S, H, W]``, at slice positions ``positions_mm``
    (see the module docstring for every step; ``maps`` the subject's coil maps, else drawn)."""
    weights = tissue_signals(protocol, tissues).astype(np.float32)
    magnitude = np.tensordot(weights, fractions, axes=(0, 0))  # sum_t f_t S_t, [S, H, W]
    if bias is not None:
        magnitude *= bias
    object_mask = fractions.sum(axis=0) > 0.5
    kspace_hw = tuple(int(v) for v in fractions.shape[-2:])
    half_fov = 0.5 * max(recon_hw) * pixel_mm
    phase = smooth_phase(kspace_hw, np.asarray(positions_mm), pixel_mm, half_fov, rng)
    image = (magnitude * np.cos(phase)) + 1j * (magnitude * np.sin(phase))  # complex64
    z = np.asarray(positions_mm) - np.mean(positions_mm)
    return acquire(image.astype(np.complex64), object_mask, recon_hw=recon_hw, pixel_mm=pixel_mm, coils=coils,
                   snr=snr, single_coil=single_coil, z_mm=z, rng=rng, keep_clean=keep_clean, maps=maps)
