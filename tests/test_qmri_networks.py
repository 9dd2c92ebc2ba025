"""Bounded network outputs, training ranges (options, checks, derivation from a fit), the flag of voxels outside the
training ranges, and backwards compatibility of saved networks."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mrlearn.cli import main
from mrlearn.errors import MrlearnError
from mrlearn.qmri.bounds import default_bounds
from mrlearn.qmri.netio import load_network, save_network
from mrlearn.qmri.netpredict import apply_network, outside_codes
from mrlearn.qmri.networks import IvimMLP
from mrlearn.qmri.ranges import (DEFAULT_RANGES, check_ranges, output_bounds, ranges_from_fit, resolve_ranges)
from mrlearn.qmri.signal import add_noise, get_model

NAMES = ("S0", "f", "D", "Dstar")
BV = [5, 10, 20, 30, 50, 80, 100, 200, 400, 600, 800]  # a cord-like protocol: 11 b-values, no b = 0
B = torch.tensor(BV, dtype=torch.float64)
WILD = torch.tensor([[1e30] * 11, [0.0] * 11, [-1e30] * 11, [float("inf")] * 11, [-float("inf")] * 11, [1e-30] * 11,
                     [1e6, -1e6] * 5 + [3.0], [-5.0] * 11])


def _bounded_net(seed: int = 0, gain: float = 50.0) -> tuple[IvimMLP, torch.Tensor, tuple[list, list]]:
    """A bounded network with large random weights (so that its last layer saturates for wild inputs)."""
    torch.manual_seed(seed)
    scales = torch.tensor([1.2, 0.5, 3.0, 150.0], dtype=torch.float64)
    bounds = output_bounds("ivim", B, DEFAULT_RANGES, s0_label_max=1.5)
    net = IvimMLP(11, bounds=(torch.tensor(bounds[0]) / scales, torch.tensor(bounds[1]) / scales))
    with torch.no_grad():
        for p in net.net.parameters():
            p.mul_(gain)
    return net, scales, bounds


def test_output_bounds_are_the_fit_bounds_widened_for_ranges_and_s0_labels():
    lo, hi = output_bounds("ivim", B, DEFAULT_RANGES, s0_label_max=1.5)
    fit = default_bounds("ivim", B)
    assert lo == [p[0] for p in fit] and hi[1:] == [p[1] for p in fit][1:]
    assert (lo[1], hi[1], lo[2], hi[2], lo[3], hi[3]) == (0.0, 1.0, 0.0, 5.0, 2.0, 300.0)
    assert hi[0] == max(fit[0][1], 1.25 * 1.5)
    lo2, hi2 = output_bounds("ivim", B, DEFAULT_RANGES, s0_label_max=100.0)
    assert hi2[0] == 125.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bounded_network_stays_in_range_for_wild_inputs(seed):
    net, scales, (lo, hi) = _bounded_net(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([WILD, torch.randn(200, 11, generator=gen) * 1e4, torch.rand(200, 11, generator=gen) * 2])
    out = net(x.float())
    assert torch.isfinite(out).all()
    assert (out >= net.lower).all() and (out <= net.upper).all()
    # in physical units, through the prediction path: f in [0, 1], D in [0, 5], D* in [2, 300], S0 >= 0
    est = apply_network(net, {"names": NAMES, "scales": scales.tolist(), "model": "ivim", "bvals": BV,
                              "output": "sigmoid", "output_bounds": [lo, hi], "ranges": DEFAULT_RANGES}, x)
    p = est.params
    assert torch.isfinite(p).all()
    for i in range(4):
        assert (p[:, i] >= lo[i]).all() and (p[:, i] <= hi[i]).all(), NAMES[i]
    assert float(p[:, 1].max()) <= 1.0 and float(p[:, 2].min()) >= 0.0
    assert sum(est.info["clamped_to_bounds"].values()) == 0  # the bounded output needs no clamping
    # the huge-gain network saturates: some outputs sit at a bound, none beyond
    assert bool(((p == torch.tensor(lo)) | (p == torch.tensor(hi))).any())


def test_abs_network_is_unbounded_and_the_prediction_clamps_and_says_so():
    torch.manual_seed(0)
    net = IvimMLP(11)
    with torch.no_grad():
        for p in net.net.parameters():
            p.mul_(50.0)
    raw = net(WILD.float())
    assert float(raw.detach().max()) > 300  # abs(): nothing stops f > 1 or D = 28.6
    meta = {"names": NAMES, "scales": [1.2, 0.5, 3.0, 150.0], "model": "ivim", "bvals": BV, "output": "abs",
            "output_bounds": None, "ranges": None, "info": {}}
    est = apply_network(net, meta, WILD)
    fit = default_bounds("ivim", B)
    for i, (lo, hi) in enumerate(fit):
        assert (est.params[:, i] >= lo).all() and (est.params[:, i] <= hi).all()
    assert sum(est.info["clamped_to_bounds"].values()) > 0
    assert est.outside is None and est.info["training_ranges"] is None
    assert any("clamped" in w for w in est.warnings) and any("not flagged" in w for w in est.warnings)
    assert all("\n" not in w for w in est.warnings)
    # an older `qmri train` network (normalised by the lowest b) was trained in the then fixed ranges
    est = apply_network(net, {**meta, "info": {"normalised": "lowest_b"}}, WILD)
    assert est.info["training_ranges"] == DEFAULT_RANGES and est.outside is not None


def test_outside_codes_closed_form():
    params = torch.tensor([[1.0, 0.2, 1.0, 50.0],    # inside
                           [9.0, 0.05, 1.0, 50.0],   # f below (S0 never flagged)
                           [1.0, 0.6, 3.5, 50.0],    # f above, D above
                           [1.0, 0.2, 0.3, 200.0],   # D below, D* above
                           [1.0, 0.5, 3.0, 150.0]], dtype=torch.float64)  # on the edges: inside
    codes, counts = outside_codes(params, NAMES, DEFAULT_RANGES)
    assert codes.tolist() == [0, 2, 2 + 4, 4 + 8, 0]
    assert counts == {"f": 2, "D": 2, "Dstar": 1}


def test_network_file_round_trip_and_old_files_still_load(tmp_path):
    net, scales, bounds = _bounded_net(0, gain=1.0)
    ranges = {"S0": [0.8, 1.2], "f": [0.05, 0.4], "D": [0.2, 2.0], "Dstar": [5.0, 100.0]}
    save_network(tmp_path / "new.pt", net, B, scales, "ivim", 11, 3, NAMES, info={"label": "gt"},
                 output_bounds=bounds, ranges=ranges)
    loaded, meta = load_network(tmp_path / "new.pt")
    assert meta["output"] == "sigmoid" and meta["ranges"] == ranges and meta["output_bounds"] == [bounds[0], bounds[1]]
    x = torch.rand(50, 11)
    assert torch.equal(loaded(x), net(x))
    # the default output bounds of a file are the network's own (scaled bounds x scales)
    save_network(tmp_path / "default.pt", net, B, scales, "ivim", 11, 3, NAMES)
    _, meta2 = load_network(tmp_path / "default.pt")
    assert np.allclose(meta2["output_bounds"], bounds, rtol=1e-6)
    # a file as written before the bounded output (no output / output_bounds / ranges keys) loads as abs
    torch.manual_seed(1)
    old = IvimMLP(11)
    torch.save({"state": old.state_dict(), "bvals": BV, "scales": scales.tolist(), "model": "ivim", "width": 11,
                "n_hidden": 3, "names": list(NAMES), "info": {"label": "mle", "normalised": "lowest_b"}},
               tmp_path / "old.pt")
    loaded_old, meta_old = load_network(tmp_path / "old.pt")
    assert meta_old["output"] == "abs" and meta_old["ranges"] is None and meta_old["output_bounds"] is None
    assert torch.equal(loaded_old(x), old(x))


def test_resolve_ranges_defaults_overrides_and_derived():
    assert resolve_ranges("ivim") == DEFAULT_RANGES
    r = resolve_ranges("ivim", "f=0.05:0.4,Dstar=5:100", derived={"D": [0.2, 1.1], "f": [0.0, 0.9]})
    assert r == {"S0": [0.8, 1.2], "f": [0.05, 0.4], "D": [0.2, 1.1], "Dstar": [5.0, 100.0]}
    assert resolve_ranges("ivim_additive", {"Dstar": [0.0, 20.0]})["Dstar"] == [0.0, 20.0]


@pytest.mark.parametrize("ranges,match", [
    ({"f": [0.5, 0.1]}, "ranges.f: needs [low, high] with finite low < high"),
    ({"f": [0.1, 0.1]}, "ranges.f: needs [low, high]"),
    ({"f": [0.0, 1.5]}, "ranges.f: [0, 1.5] leaves the physical limits [0, 1]"),
    ({"D": [-0.1, 2.0]}, "ranges.D: [-0.1, 2] leaves the physical limits [0, 5]"),
    ({"D": [0.1, 28.6]}, "leaves the physical limits"),
    ({"Dstar": [1.0, 100.0]}, "ranges.Dstar: [1, 100] leaves the physical limits [2, 300] of ivim"),
    ({"Dstar": [10.0, float("nan")]}, "finite low < high"),
    ({"S0": [0.0, 1.0]}, "ranges.S0: low must be positive"),
    ({"T2": [1.0, 2.0]}, "unknown parameter(s) ['T2']"),
    ({"f": "wide"}, "ranges.f: needs [low, high]"),
])
def test_check_ranges_refuses_bad_values(ranges, match):
    with pytest.raises(MrlearnError, match=match.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)").replace("*", r"\*")) as err:
        check_ranges({**DEFAULT_RANGES, **ranges}, "ivim")
    assert "\n" not in str(err.value)
    with pytest.raises(MrlearnError, match="missing"):
        check_ranges({"f": [0.1, 0.5]}, "ivim")


def test_study_config_refuses_ranges_past_the_physical_limits():
    from mrlearn.qmri.config import QmriConfig

    with pytest.raises(MrlearnError, match=r"qmri\.ranges\.f: \[0.1, 1.2\] leaves the physical limits"):
        QmriConfig(ranges={**DEFAULT_RANGES, "f": [0.1, 1.2]})
    assert QmriConfig(ranges={**DEFAULT_RANGES, "D": [0.2, 1.0]}).ranges["D"] == [0.2, 1.0]


def _fit_folder(tmp_path, values: dict[str, np.ndarray], converged: np.ndarray, at_bound: np.ndarray,
                method: str = "mle", model: str = "ivim"):
    """A hand-made `qmri fit` folder with 1-D volumes [V, 1, 1] (mask: every voxel)."""
    d = tmp_path / "fit"
    d.mkdir()
    vol = lambda a, dt: nib.save(nib.Nifti1Image(np.asarray(a, dtype=dt).reshape(-1, 1, 1), np.eye(4)),  # noqa: E731
                                 str(d / "x.nii.gz"))
    for name, arr, dt in [*[(f"{k}.nii.gz", v, np.float32) for k, v in values.items()],
                          ("mask.nii.gz", np.ones(converged.size), np.uint8), ("converged.nii.gz", converged, np.uint8),
                          ("at_bound.nii.gz", at_bound, np.uint8)]:
        vol(arr, dt)
        (d / "x.nii.gz").rename(d / name)
    (d / "fit.json").write_text(json.dumps({"method": method, "model": model}))
    return d


def test_ranges_from_fit_percentiles_of_converged_not_at_bound_voxels(tmp_path):
    n_good = 101
    f = np.concatenate([np.linspace(0.05, 0.25, n_good), [1.0] * 10, [0.9] * 10])
    D = np.concatenate([np.linspace(0.3, 0.8, n_good), [0.5] * 10, [4.0] * 10])
    Ds = np.concatenate([np.linspace(20.0, 60.0, n_good), [300.0] * 10, [250.0] * 10])
    at_bound = np.concatenate([np.zeros(n_good), [2 + 8] * 10, np.zeros(10)]).astype(np.uint8)  # f and D* at bound
    converged = np.concatenate([np.ones(n_good + 10), np.zeros(10)]).astype(np.uint8)  # last 10 did not converge
    d = _fit_folder(tmp_path, {"S0": np.ones_like(f), "f": f, "D": D, "Dstar": Ds}, converged, at_bound)
    ranges, record = ranges_from_fit(d, "ivim")
    f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731 - maps are stored as float32
    expect_good = {"f": f32(f[:n_good]), "Dstar": f32(Ds[:n_good]),
                   "D": f32(np.concatenate([D[:n_good], [0.5] * 10]))}  # D is not at a bound in those 10 voxels
    for k, vals in expect_good.items():
        p2, p98 = np.percentile(vals, [2, 98])
        pad = 0.1 * (p98 - p2)
        assert ranges[k] == pytest.approx([p2 - pad, p98 + pad], rel=1e-12), k
        assert record["parameters"][k]["voxels"] == vals.size
    assert record["converged_voxels"] == n_good + 10 and record["mask_voxels"] == n_good + 20
    # widened ranges are clipped to the physical limits
    d2 = tmp_path / "clip"
    d2.mkdir()
    f_low = np.linspace(0.0, 0.2, 50)
    dd = _fit_folder(d2, {"S0": np.ones(50), "f": f_low, "D": np.linspace(0.3, 0.8, 50),
                          "Dstar": np.linspace(2.0, 40.0, 50)}, np.ones(50, np.uint8), np.zeros(50, np.uint8))
    clipped, _ = ranges_from_fit(dd, "ivim")
    assert clipped["f"][0] == 0.0 and clipped["Dstar"][0] == 2.0


@pytest.mark.parametrize("case,match", [
    ("missing", "is not a folder"),
    ("net", "holds a 'net' fit"),
    ("model", "used --signal-model ivim_additive, training uses ivim"),
    ("old", "converged.nii.gz not found"),
    ("few", "f: only 5 voxels"),
])
def test_ranges_from_fit_bad_folders(tmp_path, case, match):
    n = 30
    vals = {"S0": np.ones(n), "f": np.linspace(0.1, 0.3, n), "D": np.linspace(0.3, 1, n), "Dstar": np.linspace(10, 50, n)}
    at_bound = np.zeros(n, np.uint8)
    if case == "few":
        at_bound[5:] = 2
    d = _fit_folder(tmp_path, vals, np.ones(n, np.uint8), at_bound, method="net" if case == "net" else "mle",
                    model="ivim_additive" if case == "model" else "ivim")
    if case == "old":
        (d / "converged.nii.gz").unlink()
    with pytest.raises(MrlearnError, match=match.replace("(", r"\(").replace(")", r"\)")) as err:
        ranges_from_fit(tmp_path / "nope" if case == "missing" else d, "ivim")
    assert "\n" not in str(err.value)


@pytest.fixture
def cord_like(tmp_path):
    """A 10 x 10 x 1 series without b = 0 (SNR 100): D 0.2-0.6, f 0.02-0.2, D* 20-80 -- mostly outside the default
    training ranges, as the spinal cord's estimates were."""
    rng = np.random.default_rng(0)
    shape = (10, 10, 1)
    truth = np.stack([np.full(shape, 1000.0), rng.uniform(0.02, 0.2, shape), rng.uniform(0.2, 0.6, shape),
                      rng.uniform(20, 80, shape)], -1).reshape(-1, 4)
    fn, _ = get_model("ivim")
    sig = add_noise(fn(torch.from_numpy(truth), B) / 1000, 100, generator=torch.Generator().manual_seed(1)) * 1000
    nib.save(nib.Nifti1Image(sig.numpy().reshape(*shape, len(BV)).astype(np.float32), np.eye(4)),
             str(tmp_path / "dwi.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), np.eye(4)), str(tmp_path / "mask.nii.gz"))
    (tmp_path / "b.txt").write_text(" ".join(map(str, BV)) + "\n")
    return tmp_path


def test_train_with_ranges_from_a_fit_then_flag_voxels_outside(cord_like, capsys):
    d = cord_like
    common = ["--dwi", str(d / "dwi.nii.gz"), "--bvals", str(d / "b.txt"), "--mask", str(d / "mask.nii.gz")]
    assert main(["qmri", "fit", *common, "--method", "mle", "--out", str(d / "fit")]) == 0
    for name in ("converged.nii.gz", "at_bound.nii.gz"):
        assert nib.load(str(d / "fit" / name)).get_fdata().shape == (10, 10, 1)
    expected, _ = ranges_from_fit(d / "fit", "ivim")
    capsys.readouterr()
    run = d / "run"
    rc = main(["qmri", "train", "--bvals", str(d / "b.txt"), "--label", "gt", "--n-train", "400", "--max-epochs", "2",
               "--ranges-from", str(d / "fit"), "--ranges", "S0=0.9:1.1", "--out", str(run)])
    out = capsys.readouterr().out
    assert rc == 0 and "training ranges S0 0.9-1.1, f " in out and "ranges from" in out
    want = {**expected, "S0": [0.9, 1.1]}
    blob = torch.load(run / "network.pt", weights_only=True)
    assert blob["ranges"] == want and blob["output"] == "sigmoid"
    assert json.loads((run / "metrics.json").read_text())["ranges"] == want
    import yaml

    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["ranges"] == want and resolved["ranges_from"] == str(d / "fit")
    # the derived D range covers the cord-like D of 0.2-0.6, far below the old fixed 0.4-3
    assert want["D"][0] < 0.3 and want["D"][1] < 1.0
    # applied to data: every estimate inside the output bounds; the flag map agrees with the maps and ranges
    capsys.readouterr()
    assert main(["qmri", "fit", *common, "--method", "net", "--model", str(run / "network.pt"), "--out",
                 str(d / "net")]) == 0
    printed = capsys.readouterr().out
    info = json.loads((d / "net" / "fit.json").read_text())
    maps = {k: nib.load(str(d / "net" / f"{k}.nii.gz")).get_fdata().ravel() for k in NAMES}
    flags = nib.load(str(d / "net" / "outside_training.nii.gz")).get_fdata().ravel().astype(int)
    expect = np.zeros(100, dtype=int)
    for i, k in enumerate(NAMES[1:], start=1):
        lo, hi = want[k]
        v = maps[k].astype(np.float32).astype(np.float64)
        out_k = (v < np.float32(lo)) | (v > np.float32(hi))
        expect |= out_k.astype(int) << i
        lo_b, hi_b = info["output_bounds"][k]
        assert (maps[k] >= np.float32(lo_b)).all() and (maps[k] <= np.float32(hi_b)).all()
    assert (flags == expect).all()
    assert info["outside_training"]["voxels"] == int((flags > 0).sum())
    assert f"{int((flags > 0).sum())} outside the network's training ranges" in printed
    # two epochs leave the network near the middle of its output bounds (f ~ 0.5, D ~ 2.5): outside the cord ranges
    assert (flags > 0).any() and "warning:" in printed and "outside_training.nii.gz" in printed


@pytest.mark.parametrize("value,match", [
    ("f=0.5:0.1", "f: need finite LOW < HIGH"),
    ("f=0:1.5", "ranges.f: [0, 1.5] leaves the physical limits [0, 1]"),
    ("D=-1:2", "leaves the physical limits"),
    ("K=1:2", "unknown parameter 'K'"),
    ("f=a:b", "cannot read 'f=a:b'"),
])
def test_qmri_train_refuses_bad_ranges_in_one_line(tmp_path, value, match, capsys):
    (tmp_path / "b.txt").write_text(" ".join(map(str, BV)))
    rc = main(["qmri", "train", "--bvals", str(tmp_path / "b.txt"), "--ranges", value, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and err.count("\n") == 1 and err.startswith("mrlearn: error: --ranges")
    assert not (tmp_path / "r").exists()  # refused before a run folder is made
    rc = main(["qmri", "train", "--bvals", str(tmp_path / "b.txt"), "--ranges-from", str(tmp_path / "none"),
               "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "--ranges-from" in err and err.count("\n") == 1
