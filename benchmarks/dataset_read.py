"""Benchmark: slices/s and peak memory reading fastMRI-format volumes through ``SliceDataset``.

Builds (in a child process, so the build does not count towards the reader's memory) a temporary folder of
multi-coil volumes shaped like fastMRI knee raw data (default 15 coils, 640 x 368 k-space, 320 x 320 RSS targets,
ISMRMRD header), then reads ``--reads`` slices (default 10 000) through the dataset, cycling in a seeded random
order, and prints slices/s, MB/s, the reader's resident memory before/after and its peak (VmHWM from
/proc/self/status, else ru_maxrss), and the open HDF5 handles at the end.

    python benchmarks/dataset_read.py                 # full run (a few GB of page-cache reads; ~1-3 min)
    python benchmarks/dataset_read.py --reads 500 --coils 4 --height 320 --width 184   # quick
    python benchmarks/dataset_read.py --reads 2000 --coils 8 --height 48 --width 48 --cache-mb 256
        # the read again with ``data.cache_mb`` (slices kept in memory, copies handed out) and the ratio of the two
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f} MB"


def build(folder: Path, volumes: int, slices: int, coils: int, h: int, w: int) -> None:
    """Write ``volumes`` files of smooth-object k-space plus noise, with RSS targets centre-cropped to 320 x 320."""
    import torch

    from mrlearn.data.fastmri import make_ismrmrd_header, write_volume
    from mrlearn.physics.fft import fft2c, ifft2c

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rh, rw = min(320, h), min(320, w)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32), indexing="ij")
    for v in range(volumes):
        kspace = np.empty((slices, coils, h, w), np.complex64)
        target = np.empty((slices, rh, rw), np.float32)
        for s in range(slices):
            obj = np.exp(-(yy**2 + xx**2) / (0.3 + 0.02 * s)).astype(np.complex64)
            angles = 2 * np.pi * np.arange(coils) / coils
            maps = np.exp(-((yy[None] - 0.7 * np.sin(angles)[:, None, None]) ** 2 + (xx[None] - 0.7 * np.cos(angles)[:, None, None]) ** 2))
            k = fft2c(torch.from_numpy((maps * obj).astype(np.complex64))).numpy()
            k += (rng.standard_normal(k.shape, dtype=np.float32) + 1j * rng.standard_normal(k.shape, dtype=np.float32)) * 1e-3
            kspace[s] = k
            img = ifft2c(torch.from_numpy(kspace[s])).abs().pow(2).sum(0).sqrt().numpy()
            top, left = h // 2 - rh // 2, w // 2 - rw // 2
            target[s] = img[top : top + rh, left : left + rw]
        header = make_ismrmrd_header((h, w), (rh, rw), enc_center=w // 2 - 8, enc_max=w - 17)
        write_volume(folder / f"bench{v:02d}.h5", kspace, target=target, acquisition="CORPD_FBK", header=header)


def read_all(folder: Path, args: argparse.Namespace, cache_mb: float) -> float:
    """Read ``args.reads`` slices in a seeded random order; print the figures; return slices/s."""
    from mrlearn.data.dataset import SliceDataset

    ds = SliceDataset(folder, max_open_files=args.max_open_files, cache_mb=cache_mb)
    order = np.random.default_rng(0).permutation(np.resize(np.arange(len(ds)), args.reads))
    rss_before = _status_kb("VmRSS")
    nbytes = 0
    t0 = time.perf_counter()
    for i in order:
        sample = ds[int(i)]
        nbytes += sample["kspace"].nbytes + sample["target"].nbytes
    dt = time.perf_counter() - t0
    rss_after = _status_kb("VmRSS")
    peak = _status_kb("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    slice_mb = nbytes / args.reads / 2**20
    print(f"dataset: {len(ds)} slices in {len(ds.volumes)} volumes; one sample = {slice_mb:.1f} MB "
          f"(k-space {tuple(sample['kspace'].shape)} complex64 + target {tuple(sample['target'].shape)})")
    print(f"reads: {args.reads} in {dt:.2f} s -> {args.reads / dt:.1f} slices/s, {nbytes / dt / 2**20:.0f} MB/s "
          f"(max_open_files={args.max_open_files}, cache_mb={cache_mb:g}, {os.cpu_count()} CPUs)")
    print(f"memory: RSS before reads {_mb(rss_before)}, after {_mb(rss_after)}, peak {_mb(peak)}; "
          f"open HDF5 handles at end: {ds.open_handles()}")
    ds.close()
    return args.reads / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reads", type=int, default=10_000, help="slices to read (cycling over the dataset)")
    ap.add_argument("--volumes", type=int, default=3)
    ap.add_argument("--slices", type=int, default=8, help="slices per volume")
    ap.add_argument("--coils", type=int, default=15)
    ap.add_argument("--height", type=int, default=640, help="readout samples (H)")
    ap.add_argument("--width", type=int, default=368, help="phase encodes (W)")
    ap.add_argument("--max-open-files", type=int, default=4, help="SliceDataset handle LRU size (0: open per read)")
    ap.add_argument("--cache-mb", type=float, default=0.0, help="also read with SliceDataset(cache_mb=...); ratio")
    ap.add_argument("--folder", type=Path, default=None, help="reuse/keep volumes here instead of a temp folder")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.build_only:
        build(args.folder, args.volumes, args.slices, args.coils, args.height, args.width)
        return 0

    with tempfile.TemporaryDirectory(prefix="mrlearn_bench_") as tmp:
        folder = args.folder or Path(tmp) / "vols"
        if not (folder.is_dir() and any(folder.glob("*.h5"))):
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "--build-only", "--folder", str(folder), "--volumes", str(args.volumes),
                   "--slices", str(args.slices), "--coils", str(args.coils), "--height", str(args.height), "--width", str(args.width)]
            subprocess.run(cmd, check=True)
            print(f"built {args.volumes} volumes x {args.slices} slices, {args.coils} coils, {args.height} x {args.width} "
                  f"in {time.perf_counter() - t0:.1f} s")

        rates = {}
        for cache_mb in [0.0] + ([args.cache_mb] if args.cache_mb > 0 else []):
            rates[cache_mb] = read_all(folder, args, cache_mb)
        if len(rates) == 2:
            print(f"cache: {rates[args.cache_mb] / rates[0.0]:.2f}x the slices/s of reading every time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
