"""Thin wrapper around the BART command-line tool (``bart``) for comparisons in tests and benchmarks.

BART stores arrays as ``name.hdr`` (dimensions, column-major) + ``name.cfl`` (interleaved complex float32).
Our k-space ``[C, H, W]`` maps to BART dims ``[H, W, 1, C]`` (x = readout rows, y = columns, coils in dim 3),
maps ``[C, H, W]`` to ``[H, W, 1, C, 1]``, images ``[H, W]`` to ``[H, W]``. BART's FFT is centred and unitary
like ours for sizes that are multiples of 4 (at 8 x 6 a sign flip was seen). :func:`available` says whether ``bart`` is on PATH; callers skip when it is not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from mrlearn.data.cfl import read_cfl, write_cfl  # noqa: F401  (re-exported for callers)
from mrlearn.errors import input_error


def available() -> bool:
    """True when the ``bart`` binary is on PATH."""
    return shutil.which("bart") is not None


def kspace_to_bart(kspace: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` -> BART ``[H, W, 1, C]``."""
    return np.transpose(np.asarray(kspace), (1, 2, 0))[:, :, None, :]


def maps_to_bart(maps: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` -> BART ``[H, W, 1, C, 1]``."""
    return np.transpose(np.asarray(maps), (1, 2, 0))[:, :, None, :, None]


def maps_from_bart(maps: np.ndarray) -> np.ndarray:
    """BART ``[H, W, 1, C(, M)]`` -> ``[C, H, W]`` (first map set)."""
    m = np.asarray(maps)
    m = m.reshape(m.shape[0], m.shape[1], -1) if m.ndim <= 4 else m[:, :, 0, :, 0]
    return np.ascontiguousarray(np.transpose(m, (2, 0, 1)))


def image_from_bart(image: np.ndarray) -> np.ndarray:
    """BART ``[H, W, ...]`` single image -> ``[H, W]``."""
    m = np.asarray(image)
    return np.ascontiguousarray(m.reshape(m.shape[0], m.shape[1]))


def run(args: list[str], inputs: dict[str, np.ndarray], outputs: list[str], threads: int | None = None
        ) -> tuple[dict[str, np.ndarray], float]:
    """Run ``bart *args`` in a temporary folder holding ``inputs`` (name -> BART-ordered array).

    Names in ``args`` refer to those files; returns the ``outputs`` read back and the wall time in seconds
    (of the ``bart`` process only, file writing excluded). ``threads`` sets OMP_NUM_THREADS.
    """
    exe = shutil.which("bart")
    if exe is None:
        raise input_error("bart", "the BART binary is not on PATH", "install BART (Debian package 'bart')")
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="mrlearn_bart_") as tmp:
        for name, arr in inputs.items():
            write_cfl(Path(tmp) / name, arr)
        t0 = time.perf_counter()
        proc = subprocess.run([exe, *args], cwd=tmp, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"bart {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return {name: read_cfl(Path(tmp) / name) for name in outputs}, elapsed


def ecalib(kspace: np.ndarray, kernel_size: int = 6, calib_size: int = 24, threshold: float = 0.001,
           crop: float = 0.8, threads: int | None = None) -> tuple[np.ndarray, float]:
    """``bart ecalib -m1`` on k-space ``[C, H, W]`` -> maps ``[C, H, W]`` and the bart wall time."""
    out, t = run(["ecalib", "-m1", "-k", str(kernel_size), "-r", str(calib_size), "-t", str(threshold),
                  "-c", str(crop), "ksp", "sens"], {"ksp": kspace_to_bart(kspace)}, ["sens"], threads)
    return maps_from_bart(out["sens"]), t


def pics(kspace: np.ndarray, maps: np.ndarray, reg: list[str], iters: int, extra: list[str] | None = None,
         threads: int | None = None) -> tuple[np.ndarray, float]:
    """``bart pics -w 1 <reg> -i iters`` (no data scaling) on ``[C, H, W]`` k-space and maps -> ``[H, W]``."""
    args = ["pics", "-w", "1", *reg, "-i", str(iters), *(extra or []), "ksp", "sens", "img"]
    out, t = run(args, {"ksp": kspace_to_bart(kspace), "sens": maps_to_bart(maps)}, ["img"], threads)
    return image_from_bart(out["img"]), t
