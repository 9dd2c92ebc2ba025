"""Benchmark: building the embedded population - build time and cache size for N subjects, and its fine structure.

For each N (default 10, 50, 200) it builds the population with the default options (128 x 128, 8 coils, five
contrasts, slices 8 / 6 / 4 per train / val / test subject) into a temporary folder, prints the wall time, time per
subject and the folder's size on disk, then deletes it. ``--spectrum`` also prints the log-log slopes of the
in-brain radial power spectrum (below / above 1/8 mm^-1) of the template and of subjects, on the same slices
(the measure behind the fine-structure parameters, see ``mrlearn.data.simulate.texture``).

    python benchmarks/population.py                    # N = 10, 50, 200 (about 7 GB written at N = 200)
    python benchmarks/population.py --subjects 10 --contrasts PD --spectrum
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def build(n: int, contrasts: list[str]) -> tuple[float, int]:
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    options = SimulationOptions(subjects=n, contrasts=tuple(contrasts))
    with tempfile.TemporaryDirectory(prefix="mrlearn-pop-") as tmp:
        t0 = time.perf_counter()
        root = simulate_dataset(Path(tmp) / "ds", options)
        elapsed = time.perf_counter() - t0
        size = folder_bytes(root)
        shutil.rmtree(root)
    return elapsed, size


def spectrum(subjects: int) -> None:
    from mrlearn.data.simulate.anatomy import mni_anatomy
    from mrlearn.data.simulate.contrasts import PROTOCOLS, tissue_signals
    from mrlearn.data.simulate.slabs import Slab, anatomy_layout, slab_points
    from mrlearn.data.simulate.subject import draw_subject
    from mrlearn.data.simulate.texture import brain_spectrum_slopes
    from mrlearn.data.simulate.tissue import TISSUE_INDEX

    base = mni_anatomy(2)
    layout = anatomy_layout(base)
    planes = (("axial", 15.0), ("coronal", -25.0), ("sagittal", 30.0))
    for contrast in ("T1", "PD"):
        for variation in (False, True):
            images, masks = [], []
            for k in range(subjects):
                s = draw_subject(base, 0, k, variation=variation)
                for orientation, pos in planes:
                    f = s.fractions(slab_points(layout, Slab(orientation, (pos,)), (128, 128), 1.875))
                    images.append(np.tensordot(tissue_signals(PROTOCOLS[contrast], s.tissues), f, axes=(0, 0))[0])
                    masks.append((f[TISSUE_INDEX["gm"]] + f[TISSUE_INDEX["wm"]])[0] > 0.5)
            low, high = brain_spectrum_slopes(images, masks, 1.875)
            label = "subjects" if variation else "template"
            print(f"spectrum {contrast} {label:8s} ({len(images)} slices, 1.875 mm): slope {low:.2f} below 1/8 mm^-1, "
                  f"{high:.2f} above (steepening {high - low:+.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subjects", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--contrasts", nargs="+", default=["PD", "PDFS", "T2", "T1", "FLAIR"])
    p.add_argument("--spectrum", action="store_true", help="also print the fine-structure spectrum slopes")
    args = p.parse_args()
    from mrlearn.data.simulate.anatomy import mni_anatomy

    t0 = time.perf_counter()
    mni_anatomy(2)
    print(f"template load: {time.perf_counter() - t0:.1f} s (once per process)")
    for n in args.subjects:
        elapsed, size = build(n, args.contrasts)
        print(f"N = {n:4d} subjects x {len(args.contrasts)} contrasts: build {elapsed:7.1f} s "
              f"({elapsed / n:.2f} s per subject), cache {size / 2**20:8.1f} MiB ({size / n / 2**20:.1f} MiB per subject)")
    if args.spectrum:
        spectrum(6)


if __name__ == "__main__":
    main()
