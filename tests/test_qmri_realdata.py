"""``mrlearn qmri fit`` / ``train`` on a real-like series: int16 with slope and intercept (negative background),
a NaN voxel, no b = 0; default mask, bad voxels, bounds from the physics, unit check, networks for a protocol."""

from __future__ import annotations

import json
import math

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest
import torch

from mrlearn.cli import main
from mrlearn.qmri.bounds import default_bounds, lowest_b_floor, parse_bounds
from mrlearn.qmri.fit import fit_voxels
from mrlearn.qmri.phantom import realistic_series
from mrlearn.qmri.voxels import otsu_threshold


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    s = realistic_series((22, 18, 1), snr=40, seed=3)
    raw = s.raw.astype(np.float32) * s.slope + s.intercept
    nan_at = (11, 9, 0)
    raw[nan_at + (4,)] = np.nan
    img = nib.Nifti1Image(raw, np.eye(4))  # float with a NaN (int16 cannot hold one)
    nib.save(img, str(d / "dwi_nan.nii.gz"))
    nib.save(s.nifti(), str(d / "dwi_int16.nii.gz"))
    (d / "b.txt").write_text(" ".join(f"{b:g}" for b in s.bvals))
    return d, s, nan_at


def test_int16_series_is_read_scaled_with_negative_background(series):
    d, s, _ = series
    img = nib.load(str(d / "dwi_int16.nii.gz"))
    assert img.get_data_dtype() == np.int16
    data = np.asarray(img.dataobj, dtype=np.float64)
    assert np.allclose(data, s.data) and (data[~s.tissue] < 0).mean() > 0.5 and (data[~s.tissue] > 0).any()


def test_fit_without_mask_skips_nan_voxel_and_reports(series, capsys):
    d, s, nan_at = series
    out = d / "out"
    rc = main(["qmri", "fit", "--dwi", str(d / "dwi_nan.nii.gz"), "--bvals", str(d / "b.txt"), "--method", "nlls",
               "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "mask: Otsu threshold" in printed and "bad voxels: 1 of" in printed and "1 NaN/inf" in printed
    assert "at bounds (of" in printed
    mask = nib.load(str(out / "mask.nii.gz")).get_fdata() > 0
    excluded = nib.load(str(out / "excluded.nii.gz")).get_fdata()
    assert excluded[nan_at] == 1 and (excluded > 0).sum() == 1 and not mask[nan_at]
    tissue = s.tissue.copy()
    tissue[nan_at] = False
    assert (mask & tissue).sum() >= 0.9 * tissue.sum() and (mask & ~s.tissue).sum() <= 0.05 * tissue.sum()
    info = json.loads((out / "fit.json").read_text())
    assert info["bad_voxels"]["NaN/inf"] == 1 and info["mask"]["kind"] == "otsu"
    assert info["at_bounds"]["S0"]["upper"] == 0  # the data-derived S0 bound never holds a fit
    assert info["bounds"]["S0"]["upper"] == pytest.approx(default_bounds("ivim", s.bvals)[0][1])
    d_map = nib.load(str(out / "D.nii.gz")).get_fdata()
    assert np.median(np.abs(d_map[mask & tissue] - s.truth["D"][mask & tissue])) < 0.15  # SNR 40, D in um^2/ms
    png = plt.imread(str(out / "overview.png"))
    assert png.shape[1] >= 1200 and png.shape[0] >= 1000


def test_bad_voxels_error_policy_refuses_in_one_line(series, capsys):
    d, _, _ = series
    rc = main(["qmri", "fit", "--dwi", str(d / "dwi_nan.nii.gz"), "--bvals", str(d / "b.txt"), "--bad-voxels",
               "error", "--out", str(d / "o2")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "NaN/inf" in err and "--bad-voxels skip" in err and len(err.splitlines()) == 1


def test_default_bounds_closed_form():
    assert default_bounds("ivim", [0, 10, 100, 800])[0] == (0.0, 2.0)  # b = 0 acquired: u_min = 1
    lo, hi = zip(*default_bounds("ivim", [5, 10, 100, 800]))
    beta = 5e-3
    # f up to F_PLAUSIBLE = 0.5 for the attenuation, D up to 5, D* up to 300
    u_min = 0.5 * math.exp(-beta * 300.0) + 0.5 * math.exp(-beta * 5.0)
    assert hi[0] == pytest.approx(2 / u_min) and (hi[1], hi[2], hi[3]) == (1.0, 5.0, 300.0) and lo[3] == 2.0
    assert lowest_b_floor("ivim_additive", 5.0, lo, hi) == pytest.approx(0.5 * math.exp(-beta * 305.0)
                                                                         + 0.5 * math.exp(-beta * 5.0))
    assert parse_bounds("f=0:0.5, Dstar=3:100", "ivim") == {"f": (0.0, 0.5), "Dstar": (3.0, 100.0)}


def test_user_bounds_are_applied_and_counted():
    b = torch.tensor([5, 10, 20, 50, 100, 200, 400, 800], dtype=torch.float64)
    theta = torch.tensor([[1.0, 0.3, 1.0, 50.0], [1.0, 0.05, 1.5, 20.0]], dtype=torch.float64)
    from mrlearn.qmri.signal import get_model

    fn, _ = get_model("ivim")
    res = fit_voxels(fn(theta, b), b, "ivim", "nlls", bounds={"f": (0.0, 0.2)})
    assert res.bounds[1][1] == 0.2 and bool(res.at_upper[0, 1]) and not bool(res.at_upper[1, 1])
    assert torch.allclose(res.params[1], theta[1], rtol=1e-4)


def test_otsu_threshold_separates_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-20, 10, 500), rng.normal(800, 50, 300)])
    assert 30 < otsu_threshold(values) < 650


def test_train_network_for_protocol_then_fit(series, capsys):
    d, _, _ = series
    run = d / "net_run"
    rc = main(["qmri", "train", "--bvals", str(d / "b.txt"), "--label", "ss", "--n-train", "300", "--max-epochs", "2",
               "--patience", "5", "--snr", "20:40", "--out", str(run)])
    printed = capsys.readouterr().out
    assert rc == 0 and "groundtruth-label network first" in printed and "NOT converged" in printed
    record = json.loads((run / "metrics.json").read_text())
    assert record["stopped_by"] == "max_epochs" and record["converged"] is False and record["init_from_gt"] is True
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    blob = torch.load(run / "network.pt", weights_only=True)
    assert blob["bvals"] == [5, 10, 20, 30, 50, 80, 100, 200, 400, 600, 800] and blob["info"]["label"] == "ss"
    rc = main(["qmri", "fit", "--dwi", str(d / "dwi_int16.nii.gz"), "--bvals", str(d / "b.txt"), "--method", "net",
               "--model", str(run / "network.pt"), "--out", str(d / "net_out")])
    assert rc == 0 and np.isfinite(nib.load(str(d / "net_out" / "Dstar.nii.gz")).get_fdata()).all()
    (d / "b_other.txt").write_text("0 10 20 30 50 80 100 200 400 600 800")
    rc = main(["qmri", "fit", "--dwi", str(d / "dwi_int16.nii.gz"), "--bvals", str(d / "b_other.txt"), "--method",
               "net", "--model", str(run / "network.pt"), "--out", str(d / "net_out2")])
    err = capsys.readouterr().err
    assert rc == 2 and "differ from the network's protocol" in err and "mrlearn qmri train" in err
    rc = main(["qmri", "train", "--bvals", str(d / "b.txt"), "--n-train", "300", "--out", str(run)])
    assert rc == 2 and "already holds a run" in capsys.readouterr().err


def test_qmri_train_passes_devices_and_strategy_and_refuses_zero_devices(tmp_path, monkeypatch, capsys):
    import mrlearn.qmri.train as qtrain

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        return {"label": "mle", "steps": 1, "best_step": 1, "stopped_by": "early_stopping"}

    monkeypatch.setattr(qtrain, "train_for_protocol", fake)
    (tmp_path / "b.txt").write_text("0 10 20 50 100 200 400 800")
    base = ["qmri", "train", "--bvals", str(tmp_path / "b.txt"), "--out", str(tmp_path / "run")]
    assert main([*base, "--devices", "2", "--strategy", "ddp"]) == 0
    assert (seen["devices"], seen["strategy"]) == (2, "ddp")
    assert main([*base, "--devices", "0"]) == 2
    err = capsys.readouterr().err
    assert "--devices: 0 is below 1" in err and "\n" == err[-1] and err.count("\n") == 1
