"""User images -> multi-coil k-space through the embedded dataset's acquisition model.

For each input volume (:mod:`mrlearn.data.images`; slices ``[S, h, w]``) and a generator seeded by
``(seed, crc32(name))`` (so a file's output does not depend on the other files of the folder):

1. the recon size is the image size ``(h, w)``; with ``oversample`` the k-space grid is ``(2 h, w)`` and the
   image is zero-padded along H (centred so that the centre crop returns it): unlike the embedded dataset, no
   anatomy is known outside the user's field of view;
2. magnitude images get the embedded dataset's smooth random phase (:func:`volume.smooth_phase`); complex images
   keep their own phase;
3. coils, noise (``sigma = mu / snr``, ``mu`` the mean RSS over the object) and targets as
   :func:`volume.acquire`; the object is where the magnitude exceeds 10 % of its 99.5th percentile (the whole
   image when that is empty). Targets: ``reconstruction_rss`` (``reconstruction_esc`` single-coil), the RSS of the
   fully sampled (noisy) coil images, and ``reconstruction_noiseless``, the same without noise.

Pixel size: the file's (NIfTI) or ``fov_mm / max(h, w)``; slices are one pixel apart. Output: ``OUT/<name>.h5``
per input, fastMRI format with an ISMRMRD header, attrs ``acquisition`` (the option, else the input's, else
``UNKNOWN``), ``simulator``, ``source``, ``input_kind`` (magnitude/complex), ``snr``, ``noise_std``, ``pixel_mm``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mrlearn.data.fastmri import make_ismrmrd_header, write_volume
from mrlearn.data.images import ImageVolume, list_image_files, read_image_volume
from mrlearn.data.simulate.options import SIMULATOR_VERSION
from mrlearn.data.simulate.volume import SimulatedVolume, acquire, smooth_phase
from mrlearn.errors import input_error
from mrlearn.io import guard_outputs

OBJECT_THRESHOLD = 0.1


def object_mask(magnitude: np.ndarray) -> np.ndarray:
    """Pixels above 10 % of the 99.5th percentile of ``magnitude`` (all pixels when none is)."""
    ref = float(np.percentile(magnitude, 99.5))
    mask = magnitude > OBJECT_THRESHOLD * ref
    return mask if mask.any() else np.ones_like(mask, dtype=bool)


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Zero-pad ``[S, h, w]`` to ``[S, rows, w]``, the image at rows ``rows // 2 - h // 2 ...`` (centre-crop inverse)."""
    s, h, w = x.shape
    out = np.zeros((s, rows, w), dtype=x.dtype)
    top = rows // 2 - h // 2
    out[:, top: top + h] = x
    return out


def simulate_images(vol: ImageVolume, *, coils: int = 8, snr: float = 30.0, oversample: bool = False,
                    single_coil: bool = False, seed: int = 0, fov_mm: float = 240.0) -> tuple[SimulatedVolume, float]:
    """One :class:`ImageVolume` through the acquisition model; returns the simulated volume and the pixel size."""
    rng = np.random.default_rng([int(seed), zlib.crc32(vol.name.encode("utf-8"))])
    s, h, w = vol.images.shape
    pixel = float(vol.pixel_mm) if vol.pixel_mm else float(fov_mm) / max(h, w)
    kspace_hw = (2 * h if oversample else h, w)
    magnitude = np.abs(vol.images).astype(np.float32)
    positions = np.arange(s, dtype=np.float64) * pixel
    if vol.is_complex:
        image = vol.images.astype(np.complex64)
    else:
        phase = smooth_phase((h, w), positions, pixel, 0.5 * max(h, w) * pixel, rng)
        image = (magnitude * np.cos(phase)) + 1j * (magnitude * np.sin(phase))
    image = pad_rows(np.asarray(image, dtype=np.complex64), kspace_hw[0])
    mask = pad_rows(object_mask(magnitude), kspace_hw[0])
    z = positions - positions.mean()
    out = acquire(image, mask, recon_hw=(h, w), pixel_mm=pixel, coils=coils, snr=snr, single_coil=single_coil,
                  z_mm=z, rng=rng)
    return out, pixel


def simulate_from_images(src: str | Path, out_dir: str | Path, *, acquisition: str | None = None, coils: int = 8,
                         snr: float = 30.0, oversample: bool = False, single_coil: bool = False, seed: int = 0,
                         fov_mm: float = 240.0, sens_maps: bool = False,
                         log: Callable[[str], None] | None = None) -> list[Path]:
    """Simulate every image file of ``src`` (a file or folder) into ``out_dir``; returns the files written."""
    if isinstance(coils, bool) or int(coils) != coils or not 1 <= coils <= 128:
        raise input_error("--coils", f"{coils!r} is not an integer in [1, 128]", "use e.g. 8")
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or math.isnan(snr) or snr <= 0:
        raise input_error("--snr", f"{snr!r} is not a positive number", "use e.g. 30 (or inf for no noise)")
    if not 50 <= float(fov_mm) <= 600:
        raise input_error("--fov", f"{fov_mm!r} is not a field of view in [50, 600] mm", "use e.g. 240")
    out_dir = guard_outputs(out_dir, [src])
    if out_dir.exists() and not out_dir.is_dir():
        raise input_error(out_dir, "exists and is not a folder", "choose a folder for --out")
    say = log or (lambda _msg: None)
    written: list[Path] = []
    for path in list_image_files(src):
        vol = read_image_volume(path)
        sim, pixel = simulate_images(vol, coils=int(coils), snr=float(snr), oversample=oversample,
                                     single_coil=single_coil, seed=seed, fov_mm=fov_mm)
        s, h, w = vol.images.shape
        kspace_hw = sim.kspace.shape[-2:]
        header = make_ismrmrd_header(tuple(kspace_hw), (h, w), fov_mm=(kspace_hw[0] * pixel, kspace_hw[1] * pixel, pixel))
        acq = acquisition or vol.acquisition or "UNKNOWN"
        attrs = {"simulator": f"mrlearn-from-images {SIMULATOR_VERSION}", "source": path.name,
                 "input_kind": "complex" if vol.is_complex else "magnitude", "snr": float(snr),
                 "noise_std": sim.noise_std, "pixel_mm": pixel, "seed": int(seed)}
        target = write_volume(out_dir / f"{vol.name}.h5", sim.kspace, target=sim.target, acquisition=acq,
                              patient_id=vol.name, header=header, attrs=attrs, noiseless=sim.target_noiseless,
                              sens_maps=sim.sens_maps if sens_maps else None)
        say(f"{path.name}: {s} slice(s) of {h} x {w} ({attrs['input_kind']}) -> {target} "
            f"({'single-coil' if single_coil else f'{coils} coils'}, k-space {kspace_hw[0]} x {kspace_hw[1]}, "
            f"snr {snr:g}, acquisition {acq})")
        written.append(target)
    return written
