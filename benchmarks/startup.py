"""Start-up cost of the classical CLI path: ``mrlearn reconstruct --method zero-filled`` on one slice vs
``python -c "import torch"`` (target: at most 1.6x), best of ``--repeat`` fresh processes each; also checks that
the classical path loads no Lightning (``python -X importtime``).

    python benchmarks/startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def best_of(cmd: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from mrlearn.api.volumes import write_volume

    tmp = Path(tempfile.mkdtemp(prefix="mrlearn_startup_"))
    try:
        k = (np.random.default_rng(0).standard_normal((1, 4, 64, 48)) + 0j).astype(np.complex64)
        write_volume(tmp / "data" / "one.h5", k, acquisition="CORPD_FBK")
        mrlearn = [sys.executable, "-m", "mrlearn.cli"] if shutil.which("mrlearn") is None else ["mrlearn"]
        recon = [*mrlearn, "reconstruct", "--method", "zero-filled", "--data", str(tmp / "data"), "--out", str(tmp / "out")]
        t_torch = best_of([sys.executable, "-c", "import torch"], args.repeat)
        t_recon = best_of(recon, args.repeat)
        code = ("import sys, runpy; sys.argv = " + repr(recon[len(mrlearn) - 1:]) + "; "
                "from mrlearn.cli import main; main(sys.argv[1:])")
        imp = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
        lightning = sorted({line.split("|")[-1].strip() for line in imp.stderr.splitlines() if "lightning" in line})
        print(f'python -c "import torch"                 {t_torch:6.2f} s')
        print(f"mrlearn reconstruct --method zero-filled {t_recon:6.2f} s   ratio {t_recon / t_torch:4.2f} (target <= 1.6)")
        print(f"Lightning modules imported on the classical path: {len(lightning)}" + (f" ({lightning[:3]} ...)" if lightning else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
