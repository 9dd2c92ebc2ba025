"""Benchmark: SSIM milliseconds per 320 x 320 slice — ours (numpy), ours (torch ``SSIMLoss``), skimage.

All three use the fastMRI settings (7 x 7 uniform window, K1 0.01, K2 0.03, sample covariance, data range = the
volume max), on the same random image-like volume of ``--slices`` slices in float64 (numpy) and float32/float64
(torch, batched over slices, forward only and forward+backward). Also prints the largest difference between the
three values, which must be ~1e-7 or less.

    python benchmarks/ssim.py
    python benchmarks/ssim.py --slices 64 --size 320 320 --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skimage.metrics import structural_similarity

from mrlearn.evaluation.metrics import SSIMLoss, slice_ssim


def _volume(s: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:h, :w]
    base = np.exp(-((y - h / 2) ** 2 + (x - w / 2) ** 2) / (0.08 * h * w))
    gt = base[None] * rng.uniform(0.5, 1.5, (s, 1, 1)) + 0.05 * rng.random((s, h, w))
    pred = gt + 0.05 * rng.standard_normal((s, h, w))
    return gt, pred


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--size", type=int, nargs=2, default=[320, 320])
    ap.add_argument("--repeats", type=int, default=3, help="best of N")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    s, (h, w) = args.slices, args.size
    gt, pred = _volume(s, h, w)
    vmax = float(gt.max())
    print(f"SSIM of {s} slices of {h} x {w} (fastMRI settings); best of {args.repeats}; "
          f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}")

    results: dict[str, float] = {}
    values: dict[str, float] = {}

    def ours_numpy():
        values["ours numpy"] = float(slice_ssim(gt, pred, vmax).mean())

    def skimage_ref():
        values["skimage"] = float(np.mean([structural_similarity(gt[i], pred[i], data_range=vmax) for i in range(s)]))

    results["ours numpy (float64)"] = _time(ours_numpy, args.repeats)
    results["skimage (float64)"] = _time(skimage_ref, args.repeats)

    loss = SSIMLoss()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for dtype in (torch.float32, torch.float64):
            tg = torch.tensor(gt, dtype=dtype, device=dev).unsqueeze(1)
            tp = torch.tensor(pred, dtype=dtype, device=dev).unsqueeze(1)
            dr = torch.full((s,), vmax, dtype=dtype, device=dev)
            sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

            def fwd(tg=tg, tp=tp, dr=dr, sync=sync, key=f"ours torch {dev} {str(dtype)[6:]}"):
                with torch.no_grad():
                    values[key] = 1.0 - float(loss(tp, tg, dr))
                sync()

            def fwd_bwd(tg=tg, tp=tp, dr=dr, sync=sync):
                p = tp.clone().requires_grad_(True)
                loss(p, tg, dr).backward()
                sync()

            results[f"ours torch {dev} {str(dtype)[6:]} (forward)"] = _time(fwd, args.repeats)
            results[f"ours torch {dev} {str(dtype)[6:]} (forward+backward)"] = _time(fwd_bwd, args.repeats)

    for name, dt in results.items():
        print(f"  {name:<44} {1e3 * dt / s:8.3f} ms/slice")
    ref = values["skimage"]
    for name, v in values.items():
        print(f"  SSIM {name:<28} {v:.9f}   |diff to skimage| {abs(v - ref):.2e}")


if __name__ == "__main__":
    main()
