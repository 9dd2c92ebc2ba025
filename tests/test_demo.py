"""mrlearn demo --quick end to end from an arbitrary folder: report.html + metrics.csv with correct numbers."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from helpers_data import rss_target

from mrlearn.cli import main  # noqa: E402
from mrlearn.data.fastmri import read_kspace, read_target  # noqa: E402
from mrlearn.evaluation import metrics  # noqa: E402
from mrlearn.physics.masks import RandomMaskFunc, file_seed  # noqa: E402

def test_demo_quick_writes_report_and_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MRLEARN_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "runs/demo/report.html" in out and "U-Net" in out and "zero-filled" in out
    demo = tmp_path / "runs" / "demo"
    rows = list(csv.DictReader((demo / "metrics.csv").open()))
    assert list(rows[0]) == ["method", "volume", "nmse", "psnr", "ssim"]
    methods = ["CG-SENSE", "CS (L1-wavelet)", "U-Net", "unrolled", "zero-filled"]
    assert sorted({r["method"] for r in rows}) == methods and len(rows) == 2 * len(methods)
    mean_psnr = {m: np.mean([float(r["psnr"]) for r in rows if r["method"] == m]) for m in methods}
    assert mean_psnr["CG-SENSE"] > mean_psnr["zero-filled"] and mean_psnr["CS (L1-wavelet)"] > mean_psnr["zero-filled"]
    # the zero-filled rows equal an independent computation: fixed per-file mask, numpy RSS, fastMRI metrics
    root = next((tmp_path / "cache" / "embedded").iterdir())
    mask_func = RandomMaskFunc([0.25], [4])  # the quick block's evaluation mask
    for r in rows:
        if r["method"] != "zero-filled":
            continue
        path = root / "test" / r["volume"]
        k, target = read_kspace(path), read_target(path)
        m = mask_func(k.shape[-2:], seed=file_seed(path.name))[0].numpy().reshape(-1)
        zf = rss_target(k * m)
        assert float(r["nmse"]) == pytest.approx(metrics.nmse(target, zf), rel=1e-4)
        assert float(r["psnr"]) == pytest.approx(metrics.psnr(target, zf), rel=1e-4)
        assert float(r["ssim"]) == pytest.approx(metrics.ssim(target, zf), rel=1e-4)
    html = (demo / "report.html").read_text()
    assert "Metrics (test volumes)" in html and "±" in html
    assert len(re.findall(r"data:image/png;base64,", html)) == 2  # examples + training curves
    assert (demo / "runs" / "u_net" / "checkpoints" / "best.ckpt").is_file()
    assert (demo / "runs" / "unrolled" / "checkpoints" / "best.ckpt").is_file()
    # a second run reuses the dataset and retrains into the same folder
    assert main(["demo", "--quick"]) == 0
    assert "reused the embedded dataset" in capsys.readouterr().err
    assert np.isfinite([float(r["psnr"]) for r in csv.DictReader((demo / "metrics.csv").open())]).all()
