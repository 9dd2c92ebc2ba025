"""`mrlearn --version` answers before any heavy import (no torch, numpy or Lightning); the package API stays lazy."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mrlearn
from mrlearn.cli import main

HEAVY = ("torch", "numpy", "lightning", "h5py", "scipy")


def _imported(stderr: str) -> set[str]:
    """Top-level package names in a ``python -X importtime`` report."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("argv", [["--version"], ["--vers"], ["--version", "train"]])
def test_version_imports_nothing_heavy(argv):
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "mrlearn.cli", *argv], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == f"mrlearn {mrlearn.__version__}"
    imported = _imported(r.stderr)
    assert "mrlearn" in imported  # the report is read correctly
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_version_in_process_and_help_still_wins(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"mrlearn {mrlearn.__version__}"
    with pytest.raises(SystemExit) as exc:
        main(["-h", "--version"])  # argparse acts on the first: the full help, listing every command
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "convert" in out and "reconstruct" in out


def test_package_attributes_still_resolve():
    code = ("import sys, mrlearn; assert 'torch' not in sys.modules; "
            "names = ['reconstruct', 'load_model', 'read_volume', 'write_volume', 'nmse', 'psnr', 'ssim', 'fit_ivim']; "
            "assert all(callable(getattr(mrlearn, n)) for n in names); print(mrlearn.__version__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == mrlearn.__version__
