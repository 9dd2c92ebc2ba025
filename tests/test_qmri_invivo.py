"""``mrlearn qmri fit`` end to end on a small synthetic 4-D NIfTI, and its one-line input errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mrlearn.cli import main
from mrlearn.qmri.netio import save_network
from mrlearn.qmri.networks import IvimMLP
from mrlearn.qmri.signal import add_noise, get_model

BV = [0, 10, 20, 30, 50, 80, 100, 200, 400, 800]
AFFINE = np.diag([1.5, 1.5, 4.0, 1.0])
AFFINE[:3, 3] = [-10.0, 5.0, 2.0]


@pytest.fixture
def dwi_case(tmp_path):
    """A 6 x 5 x 2 volume of IVIM signals (scale 1000, SNR 200) with known maps; S0 = 0 outside a 4 x 3 block."""
    rng = np.random.default_rng(0)
    shape = (6, 5, 2)
    truth = {"S0": np.full(shape, 1000.0), "f": rng.uniform(0.1, 0.4, shape), "D": rng.uniform(0.6, 2.5, shape),
             "Dstar": rng.uniform(15, 80, shape)}
    theta = torch.from_numpy(np.stack([truth[k] for k in ("S0", "f", "D", "Dstar")], -1).reshape(-1, 4))
    fn, _ = get_model("ivim")
    sig = fn(theta, torch.tensor(BV, dtype=torch.float64)) / 1000
    sig = add_noise(sig, 200, generator=torch.Generator().manual_seed(1)) * 1000
    data = sig.numpy().reshape(*shape, len(BV)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), str(tmp_path / "dwi.nii.gz"))
    (tmp_path / "b.txt").write_text(" ".join(str(b) for b in BV) + "\n")
    mask = np.zeros(shape, dtype=np.uint8)
    mask[1:5, 1:4, :] = 1
    nib.save(nib.Nifti1Image(mask, AFFINE), str(tmp_path / "mask.nii.gz"))
    return tmp_path, truth, mask.astype(bool)


@pytest.mark.parametrize("method", ["mle", "nlls"])
def test_fit_writes_maps_with_affine_and_units(dwi_case, method):
    d, truth, mask = dwi_case
    out = d / f"out_{method}"
    rc = main(["qmri", "fit", "--dwi", str(d / "dwi.nii.gz"), "--bvals", str(d / "b.txt"), "--mask",
               str(d / "mask.nii.gz"), "--method", method, "--out", str(out)])
    assert rc == 0
    for k in ("S0", "f", "D", "Dstar"):
        img = nib.load(str(out / f"{k}.nii.gz"))
        assert np.allclose(img.affine, AFFINE) and img.shape == mask.shape
        vol = img.get_fdata()
        assert np.all(vol[~mask] == 0)
        desc = img.header["descrip"].tobytes().decode()
        assert k in desc
        if k in ("D", "Dstar"):
            assert "um^2/ms" in desc
        err = np.abs(vol[mask] - truth[k][mask]) / np.abs(truth[k][mask])
        limit = {"S0": 0.02, "f": 0.35, "D": 0.15, "Dstar": 2.0}[k]  # SNR 200; D* is the least determined
        assert np.median(err) < limit / 2 and np.all(np.isfinite(vol)), (k, np.median(err))
    assert (out / "overview.png").stat().st_size > 1000
    info = json.loads((out / "fit.json").read_text())
    if method == "mle":
        # estimated sigma (residual sd) close to the true noise sd 1000 / 200 = 5
        assert 2.5 < info["sigma"] < 10


def test_fit_with_network_and_given_sigma(dwi_case):
    d, _, _ = dwi_case
    torch.manual_seed(0)
    scales = torch.tensor([1.2, 0.5, 3.0, 150.0], dtype=torch.float64)
    save_network(d / "net.pt", IvimMLP(10), torch.tensor(BV, dtype=torch.float64), scales, "ivim_additive", 10, 3,
                 ("S0", "f", "D", "Dstar"))
    rc = main(["qmri", "fit", "--dwi", str(d / "dwi.nii.gz"), "--bvals", str(d / "b.txt"), "--method", "net",
               "--model", str(d / "net.pt"), "--out", str(d / "net_out")])
    assert rc == 0 and (d / "net_out" / "Dstar.nii.gz").is_file()
    rc = main(["qmri", "fit", "--dwi", str(d / "dwi.nii.gz"), "--bvals", str(d / "b.txt"), "--mask",
               str(d / "mask.nii.gz"), "--sigma", "5", "--out", str(d / "sig_out")])
    assert rc == 0 and json.loads((d / "sig_out" / "fit.json").read_text())["sigma"] == 5


def _write(path, arr):
    nib.save(nib.Nifti1Image(np.asarray(arr, dtype=np.float32), AFFINE), str(path))


@pytest.mark.parametrize("case,match", [
    ("bvals_count", "9 b-values for 10 volumes"),
    ("nan", "cannot be fitted (NaN/inf first)"),
    ("negative", "cannot be fitted (negative first)"),
    ("empty_mask", "mask is empty"),
    ("three_d", "expected a 4-D image"),
    ("mask_shape", "mask shape"),
    ("missing", "DWI file not found"),
    ("missing_bvals", "protocol file not found"),
    ("net_without_model", "--model"),
    ("net_wrong_protocol", "differ from the network"),
    ("bad_sigma", "--sigma"),
    ("si_units", "look like s/m^2"),
    ("bad_bounds", "--bounds"),
])
def test_fit_input_errors_are_one_line(dwi_case, case, match, capsys):
    d, _, mask = dwi_case
    data = nib.load(str(d / "dwi.nii.gz")).get_fdata()
    args = {"--dwi": d / "dwi.nii.gz", "--bvals": d / "b.txt", "--mask": d / "mask.nii.gz"}
    extra: list[str] = []
    if case == "bvals_count":
        (d / "b9.txt").write_text(" ".join(map(str, BV[:9])))
        args["--bvals"] = d / "b9.txt"
    elif case in ("nan", "negative"):
        bad = data.copy()
        bad[2, 2, 0, 3] = np.nan if case == "nan" else -4.0
        _write(d / "bad.nii.gz", bad)
        args["--dwi"] = d / "bad.nii.gz"
        extra = ["--bad-voxels", "error"]
    elif case == "empty_mask":
        _write(d / "m0.nii.gz", np.zeros(mask.shape))
        args["--mask"] = d / "m0.nii.gz"
    elif case == "three_d":
        _write(d / "d3.nii.gz", data[..., 0])
        args["--dwi"] = d / "d3.nii.gz"
    elif case == "mask_shape":
        _write(d / "m2.nii.gz", np.ones((6, 5, 3)))
        args["--mask"] = d / "m2.nii.gz"
    elif case == "missing":
        args["--dwi"] = d / "nope.nii.gz"
    elif case == "missing_bvals":
        args["--bvals"] = d / "nope.txt"
    elif case == "net_without_model":
        extra = ["--method", "net"]
    elif case == "net_wrong_protocol":
        save_network(d / "n.pt", IvimMLP(10), torch.arange(10, dtype=torch.float64) * 7, torch.ones(4),
                     "ivim", 10, 3, ("S0", "f", "D", "Dstar"))
        extra = ["--method", "net", "--model", str(d / "n.pt")]
    elif case == "bad_sigma":
        extra = ["--sigma", "-1"]
    elif case == "si_units":
        (d / "b_si.txt").write_text(" ".join(str(b * 1e6) for b in BV))
        args["--bvals"] = d / "b_si.txt"
    elif case == "bad_bounds":
        extra = ["--bounds", "f=0.5:0.1"]
    argv = ["qmri", "fit", "--out", str(d / "o")] + [x for k, v in args.items() for x in (k, str(v))] + extra
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert match in err and len(err.splitlines()) == 1 and err.startswith("mrlearn: error:")
