"""Masks beside fastMRI's own code: identical masks for the same seed, and the cost of one mask (prints; no asserts).

With a fastMRI checkout (its ``fastmri/data/subsample.py`` needs only numpy and torch)::

    python benchmarks/mask_parity.py --fastmri /path/to/fastMRI

compares ``RandomMaskFunc``, ``EquiSpacedMaskFunc`` and ``EquispacedMaskFractionFunc`` of both for ``--seeds``
seeds (ints and fastMRI's per-file tuples ``tuple(map(ord, fname))``) at widths 320, 368, 372 and 640, with the
pairs (0.08, 4) and (0.04, 8), called as fastMRI's data transforms call them (shape ``(1, 640, W, 2)``), then
with ``allow_any_combination`` and with unseeded calls from a seeded constructor. Without ``--fastmri`` only the
timings are printed: milliseconds per mask for each class at 640 x 368 and for the Poisson-disc mask at 320 x 320.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

from mrlearn.physics.masks import (
    EquispacedMaskFractionFunc,
    EquiSpacedMaskFunc,
    PoissonDiscMaskFunc,
    RandomMaskFunc,
    file_seed,
)

OURS = {"RandomMaskFunc": RandomMaskFunc, "EquiSpacedMaskFunc": EquiSpacedMaskFunc,
        "EquispacedMaskFractionFunc": EquispacedMaskFractionFunc}
WIDTHS = (320, 368, 372, 640)


def load_subsample(checkout: str):
    path = Path(checkout) / "fastmri" / "data" / "subsample.py"
    if not path.is_file():
        sys.exit(f"mask_parity: {path} not found; pass the root of a fastMRI checkout")
    spec = importlib.util.spec_from_file_location("fastmri_subsample", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def compare(ref_module, seeds: int) -> int:
    """Print one line per class and width; returns the number of differing masks."""
    cfs, accs = [0.08, 0.04], [4, 8]
    bad = 0
    for name, cls in OURS.items():
        ref_cls = getattr(ref_module, name)
        for width in WIDTHS:
            shape = (1, 640, width, 2)
            ours, ref = cls(cfs, accs), ref_cls(cfs, accs)
            diff = 0
            for i in range(seeds):
                seed = i if i % 2 else file_seed(f"file{1000000 + i}.h5")
                (m1, n1), (m2, n2) = ours(shape, seed=seed), ref(shape, seed=seed)
                diff += int(n1 != n2 or m1.shape != m2.shape or not np.array_equal(m1.numpy(), m2.numpy()))
            any_ours, any_ref = cls(cfs, accs, True), ref_cls(cfs, accs, True)
            diff += sum(not np.array_equal(any_ours(shape, seed=s)[0].numpy(), any_ref(shape, seed=s)[0].numpy())
                        for s in range(seeds // 4))
            stream_ours, stream_ref = cls(cfs, accs, seed=5), ref_cls(cfs, accs, seed=5)
            diff += sum(not np.array_equal(stream_ours(shape)[0].numpy(), stream_ref(shape)[0].numpy())
                        for _ in range(seeds // 4))
            print(f"{name:28s} W={width:4d}: {seeds + 2 * (seeds // 4)} masks, {diff} differ")
            bad += diff
    return bad


def timings(repeats: int) -> None:
    for name, cls in OURS.items():
        f = cls([0.08], [4])
        t0 = time.perf_counter()
        for s in range(repeats):
            f((15, 640, 368), seed=s)
        print(f"{name:28s} 640 x 368: {1e3 * (time.perf_counter() - t0) / repeats:.3f} ms per mask")
    f = PoissonDiscMaskFunc([4], calib=(16, 16))
    f((320, 320), seed=0)  # the reference scale, found once per (shape, R, options)
    times = []
    for s in range(1, repeats // 10 + 2):
        t0 = time.perf_counter()
        f((320, 320), seed=s)
        times.append(time.perf_counter() - t0)
    print(f"{'PoissonDiscMaskFunc':28s} 320 x 320: {1e3 * float(np.median(times)):.1f} ms per mask (median)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fastmri", help="root of a fastMRI checkout (its fastmri/data/subsample.py is compared)")
    p.add_argument("--seeds", type=int, default=100, help="seeds per class and width (default 100)")
    p.add_argument("--repeats", type=int, default=100, help="masks per timing (default 100)")
    a = p.parse_args()
    bad = 0
    if a.fastmri:
        bad = compare(load_subsample(a.fastmri), a.seeds)
        print(f"total differing masks: {bad}")
    timings(a.repeats)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
