"""Time of ``mrlearn convert`` on BART 3-D k-space ``[X, Y, Z, C]`` (layout read from the data, inverse FFT along
dim 2, target, write) vs the same data already in the standard layout ``[X, Y, 1, C, ..., Z]`` (no detection, no
transform) and vs BART doing the layout change (``bart fft -u -i 4`` then ``bart transpose 2 13``) before the
standard conversion; best of ``--repeat`` runs each, in one process.

    python benchmarks/convert_3d.py [--size 192 --partitions 24 --coils 8 --repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from mrlearn.data.cfl import write_cfl
from mrlearn.data.convert import bart_to_fastmri


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--partitions", type=int, default=24)
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, z, c = args.size, args.partitions, args.coils
    tmp = Path(tempfile.mkdtemp(prefix="mrlearn_convert3d_"))
    try:
        g = np.linspace(-1, 1, n)
        gx, gy, gz = np.meshgrid(g, g, np.linspace(-0.2, 0.2, z), indexing="ij")
        obj = np.exp(-(gx ** 2 + gy ** 2 + gz ** 2) / 0.3)
        rng = np.random.default_rng(0)
        img = np.stack([obj * np.exp(-((gx - np.cos(a)) ** 2 + (gy - np.sin(a)) ** 2) / 2 + 1j * a)
                        for a in rng.uniform(0, 2 * np.pi, c)], axis=-1)
        k = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(img, axes=(0, 1, 2)), axes=(0, 1, 2), norm="ortho"),
                            axes=(0, 1, 2)).astype(np.complex64)
        k += (1e-4 * np.abs(k).max() * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))).astype(np.complex64)
        write_cfl(tmp / "k3d", k)
        slices = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(k, axes=2), axis=2, norm="ortho"), axes=2)
        write_cfl(tmp / "kstd", np.transpose(slices, (0, 1, 3, 2)).reshape((n, n, 1, c) + (1,) * 9 + (z,)))
        t_3d = best_of(lambda: bart_to_fastmri(tmp / "k3d", tmp / "a.h5"), args.repeat)
        t_std = best_of(lambda: bart_to_fastmri(tmp / "kstd", tmp / "b.h5"), args.repeat)
        print(f"k-space [{n}, {n}, {z}, {c}] complex64 ({k.nbytes / 2 ** 20:.0f} MiB), best of {args.repeat}")
        print(f"mrlearn convert, 3-D layout from the data   {t_3d:6.2f} s")
        print(f"mrlearn convert, standard layout           {t_std:6.2f} s   (3-D / standard {t_3d / t_std:4.2f})")
        if shutil.which("bart"):
            def via_bart() -> None:
                subprocess.run(["bart", "fft", "-u", "-i", "4", str(tmp / "k3d"), str(tmp / "i")], check=True)
                subprocess.run(["bart", "transpose", "2", "13", str(tmp / "i"), str(tmp / "t")], check=True)
                bart_to_fastmri(tmp / "t", tmp / "c.h5")
            t_bart = best_of(via_bart, args.repeat)
            print(f"bart fft + bart transpose + standard        {t_bart:6.2f} s   (mrlearn 3-D / this {t_3d / t_bart:4.2f})")
        else:
            print("bart not installed: no BART comparison")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
