"""benchmarks/gpu_check.py: answers --help anywhere, one clean line without a GPU, its table and fastMRI import."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_and_no_gpu_line():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "--fastmri-path" in res.stdout and "--only" in res.stdout
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.strip().splitlines() == ["gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); "
                                               "nothing to measure"]


def test_table_and_reference_import(tmp_path):
    gc = _module()
    text = gc.format_table([{"check": "U-Net training", "setting": "a", "images/s": 123.456, "peak MiB": math.nan},
                            {"check": "DDP (NCCL)", "setting": "b", "note": "skipped"}])
    lines = text.splitlines()
    assert lines[0].split() == ["check", "setting", "images/s", "peak", "MiB", "note"] and len(lines) == 4
    assert "123.5" in lines[2] and " - " in lines[2] + " "
    ref = tmp_path / "fastmri" / "models" / "unet.py"
    ref.parent.mkdir(parents=True)
    ref.write_text("class Unet:\n    def __init__(self, in_chans, out_chans, chans=32, num_pool_layers=4, drop_prob=0.0):\n"
                   "        self.chans = chans\n")
    assert gc.load_fastmri_unet(str(tmp_path))(1, 1).chans == 32  # imported from the user's checkout
    assert gc.load_fastmri_unet(str(ref)).__module__ == "fastmri_reference_unet"
