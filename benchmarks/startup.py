"""Start-up cost of the classical CLI path: ``mrlearn reconstruct --method zero-filled`` on one slice vs
``python -c "import torch"`` (target: at most 1.6x), and of ``mrlearn --version`` (target: no heavy import, close
to a bare ``python -c pass``), best of ``--repeat`` fresh processes each; also checks that the classical path
loads no Lightning and ``--version`` neither torch, numpy nor Lightning (``python -X importtime``).

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


HEAVY = ("torch", "numpy", "lightning", "h5py", "scipy")


def imported_packages(cmd: list[str]) -> set[str]:
    """Top-level packages a Python command imports (``python -X importtime``; ``cmd`` starts with the interpreter)."""
    r = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True)
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in r.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


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
        t_bare = best_of([sys.executable, "-c", "pass"], args.repeat)
        t_torch = best_of([sys.executable, "-c", "import torch"], args.repeat)
        t_version = best_of([*mrlearn, "--version"], args.repeat)
        heavy = sorted(imported_packages([sys.executable, "-m", "mrlearn.cli", "--version"]) & set(HEAVY))
        t_recon = best_of(recon, args.repeat)
        code = ("import sys, runpy; sys.argv = " + repr(recon[len(mrlearn) - 1:]) + "; "
                "from mrlearn.cli import main; main(sys.argv[1:])")
        imp = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
        lightning = sorted({line.split("|")[-1].strip() for line in imp.stderr.splitlines() if "lightning" in line})
        print(f'python -c "pass"                         {t_bare:6.3f} s')
        print(f'python -c "import torch"                 {t_torch:6.3f} s')
        print(f"mrlearn --version                        {t_version:6.3f} s   ratio to import torch "
              f"{t_version / t_torch:4.2f}, to bare python {t_version / t_bare:4.2f}; heavy imports: {heavy or 'none'}")
        print(f"mrlearn reconstruct --method zero-filled {t_recon:6.2f} s   ratio {t_recon / t_torch:4.2f} (target <= 1.6)")
        print(f"Lightning modules imported on the classical path: {len(lightning)}" + (f" ({lightning[:3]} ...)" if lightning else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
