"""benchmarks/gpu_check.py: answers --help anywhere, one clean line without a GPU, its table and fastMRI import."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


REFERENCE_UNET = '''
import torch
from torch import nn


class Unet(nn.Module):
    """A stand-in with fastMRI's constructor: the check registers and trains whatever the user's file holds."""

    def __init__(self, in_chans, out_chans, chans=32, num_pool_layers=4, drop_prob=0.0):
        super().__init__()
        self.in_chans, self.out_chans = in_chans, out_chans
        self.net = nn.Sequential(nn.Conv2d(in_chans, chans, 3, padding=1), nn.ReLU(), nn.Conv2d(chans, out_chans, 1))

    def forward(self, image):
        return self.net(image)
'''


@pytest.mark.slow
def test_every_part_runs_through_the_trainer_on_cpu(tmp_path):
    """--device cpu --tiny: each default part for a couple of steps through mrlearn's runner (a code-path check)."""
    ref = tmp_path / "unet.py"
    ref.write_text(REFERENCE_UNET)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--fastmri-path", str(ref),
                          "--out", str(tmp_path / "work")], capture_output=True, text=True, env=env, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    table = [ln for ln in lines if ln.startswith(("U-Net training", "unrolled training", "convex block", "scaling"))]
    assert "failed" not in res.stdout, res.stdout
    unet = [ln for ln in table if ln.startswith("U-Net training")]
    assert len(unet) == 5  # ours fp32 TF32 off / on, bf16; the reference fp32 TF32 off / on
    assert sum("TF32 matmul=off cudnn=off" in ln for ln in unet) == 2
    assert sum("TF32 matmul=on cudnn=on" in ln for ln in unet) == 3
    assert sum(ln.split()[2] == "fastMRI" for ln in unet) == 2
    assert sum(ln.startswith("unrolled training") for ln in table) == 2
    assert sum(ln.startswith("convex block") for ln in table) == 2
    scaling = [ln for ln in table if ln.startswith("scaling")]
    assert len(scaling) == 2 and "1 x batch 2" in scaling[0] and "2 x batch 2" in scaling[1]
    header = next(ln for ln in lines if ln.startswith("check "))
    cols = header.split()
    assert {"images/s", "ms/step", "x", "fastMRI", "images/s/GPU", "efficiency"} <= set(cols)
    assert any(ln.startswith("skipped: presets") for ln in lines)  # what did not run is said
    for ln in table:  # every run timed at least one step: a number in the images/s or seconds column
        assert any(ch.isdigit() for ch in ln.split("  ", 2)[-1]), ln
    gc = _module()
    assert gc.SHARES.keys() == set(gc.PARTS) and set(gc.DEFAULT_PARTS) < set(gc.PARTS)
