"""Tiny fastMRI-format test volumes (2-4 coils, 16 x 12, 1-3 slices), seeded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrlearn.data.fastmri import make_ismrmrd_header, write_volume
from mrlearn.physics.fft import fft2c


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth complex 'object': a few Gaussian blobs with a linear phase, complex64 ``[h, w]``."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    img = np.zeros((h, w))
    for _ in range(3):
        cy, cx, s = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0.2, 0.5)
        img += rng.uniform(0.5, 1.0) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s))
    return (img * np.exp(1j * (0.5 * x + 0.3 * y))).astype(np.complex64)


def make_kspace(slices: int = 2, coils: int | None = 3, h: int = 16, w: int = 12, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """Fully sampled centered k-space ``[S, C, H, W]`` (``[S, H, W]`` when ``coils`` is None), complex64."""
    rng = np.random.default_rng(seed)
    imgs = np.stack([smooth_image(h, w, seed * 100 + s) for s in range(slices)])
    if coils is not None:
        y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        maps = []
        for c in range(coils):
            a = 2 * np.pi * c / coils + rng.uniform(0, 0.3)
            maps.append(np.exp(-((y - 0.8 * np.sin(a)) ** 2 + (x - 0.8 * np.cos(a)) ** 2)) * np.exp(1j * a))
        imgs = imgs[:, None] * np.stack(maps)[None].astype(np.complex64)
    k = fft2c(torch.from_numpy(imgs.astype(np.complex64))).numpy() * scale
    return k.astype(np.complex64)


def rss_target(kspace: np.ndarray) -> np.ndarray:
    """Reference target: RSS (or magnitude) of the centered orthonormal inverse FFT, float32 ``[S, H, W]``."""
    k = np.asarray(kspace, dtype=np.complex128)
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    if k.ndim == 4:
        return np.sqrt((np.abs(img) ** 2).sum(axis=1)).astype(np.float32)
    return np.abs(img).astype(np.float32)


def write_test_volume(path: Path, *, slices: int = 2, coils: int | None = 3, h: int = 16, w: int = 12, seed: int = 0,
                      acquisition: str = "CORPD_FBK", header: bool = True, target: bool = True,
                      recon: tuple[int, int] | None = None, scale: float = 1.0) -> Path:
    """Write one tiny volume; the target is the RSS image centre-cropped to ``recon`` (default ``(h // 2, w)``)."""
    k = make_kspace(slices, coils, h, w, seed, scale)
    rh, rw = recon or (h // 2, w)
    tgt = None
    if target:
        full = rss_target(k)
        top, left = h // 2 - rh // 2, w // 2 - rw // 2
        tgt = full[:, top : top + rh, left : left + rw]
    hdr = make_ismrmrd_header((h, w), (rh, rw), enc_center=w // 2 - 1, enc_max=w - 3) if header else None
    return write_volume(path, k, target=tgt, acquisition=acquisition, patient_id=f"p{seed}", header=hdr)


def write_tiny_splits(root: Path, splits: tuple[tuple[str, tuple[int, ...]], ...] = (("train", (0, 1)), ("val", (2,))),
                      **volume: Any) -> Path:
    """``root/data/<split>/v<seed>.h5`` volumes (2 slices, 3 coils, 16 x 16, no header by default); returns ``root``."""
    options = {"slices": 2, "coils": 3, "h": 16, "w": 16, "header": False, "recon": (16, 16), **volume}
    for split, seeds in splits:
        (root / "data" / split).mkdir(parents=True, exist_ok=True)
        for s in seeds:
            write_test_volume(root / "data" / split / f"v{s}.h5", seed=s, **options)
    return root
