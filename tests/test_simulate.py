"""The embedded dataset (mrlearn.data.simulate) and `mrlearn simulate`."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mrlearn.cli import main as cli_main
from mrlearn.data.fastmri import read_volume_info
from mrlearn.data.simulate import CONTRASTS, PROTOCOLS, SimulationOptions, default_cache_dir, load_manifest, options_hash, simulate_dataset
from mrlearn.data.simulate.anatomy import mni_anatomy
from mrlearn.data.simulate.contrasts import Protocol, contrast_image, tissue_signals
from mrlearn.data.simulate.phantom import phantom_anatomy
from mrlearn.data.simulate.slabs import Slab, anatomy_layout, sample_slab, slab_points
from mrlearn.data.simulate.tissue import TISSUE_INDEX, TISSUES, parameter_maps
from mrlearn.data.simulate.volume import fft2c_np, ifft2c_np, simulate_volume
from mrlearn.errors import MrlearnError
from mrlearn.physics.complex import center_crop
from mrlearn.physics.fft import fft2c, ifft2c
from mrlearn.physics.sense import rss

SMALL = SimulationOptions(anatomy="phantom", matrix=(32, 32), coils=4, slices=4, subjects=(3, 2, 2), seed=1)


def _read(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in f.keys()}
        out["attrs"] = dict(f.attrs)
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return simulate_dataset(tmp_path_factory.mktemp("sim") / "ds", SMALL)


# ----------------------------------------------------------------------------------------------- layout and cache
def test_layout_manifest_and_reader(small):
    m = load_manifest(small)
    assert m["options_hash"] == options_hash(SMALL) and m["seed"] == 1 and m["options"]["coils"] == 4
    assert {"mrlearn", "numpy", "h5py"} <= set(m["versions"])
    assert m["counts"] == {"train": 3 * 5, "val": 2 * 5, "test": 2 * 5}
    assert {f["acquisition"] for f in m["files"]} == set(CONTRASTS)
    assert {f["orientation"] for f in m["files"]} == {"axial", "coronal", "sagittal"}
    for sub in m["subjects"]:  # subject k gets orientation k mod 3, on every contrast
        assert sub["orientation"] == ("axial", "coronal", "sagittal")[sub["index"] % 3]
        assert {f["orientation"] for f in m["files"] if f["subject"] == sub["subject_id"]} == {sub["orientation"]}
    for f in m["files"]:
        path = small / f["path"]
        assert path.parent.name == f["split"] and path.is_file()
        info = read_volume_info(path)  # the fastMRI reader accepts it
        assert info.kspace_shape == (4, 4, 32, 32) and info.recon_size == (32, 32)
        assert info.acquisition == f["acquisition"] and info.target_key == "reconstruction_rss"
    assert not list(small.rglob("*.tmp"))


def test_deterministic_for_a_seed(small, tmp_path):
    again = simulate_dataset(tmp_path / "again", SMALL)
    other = simulate_dataset(tmp_path / "other", replace(SMALL, seed=2))
    m1, m2 = load_manifest(small), load_manifest(again)
    m1.pop("elapsed_s"), m2.pop("elapsed_s")
    assert m1 == m2
    for f in m1["files"][::4]:
        a, b = _read(small / f["path"]), _read(again / f["path"])
        np.testing.assert_array_equal(a["kspace"], b["kspace"])
        np.testing.assert_array_equal(a["reconstruction_rss"], b["reconstruction_rss"])
    f0 = m1["files"][0]["path"]
    assert not np.array_equal(_read(small / f0)["kspace"], _read(other / f0)["kspace"])


def test_cache_is_reused_and_protected(tmp_path):
    opts = replace(SMALL, subjects=(1, 1, 1), contrasts=("PD",))
    logs: list[str] = []
    root = simulate_dataset(tmp_path / "c", opts, log=logs.append)
    assert logs[-1].startswith("made 3 subjects, 3 volumes")
    files = sorted(root.rglob("*.h5"))
    stamps = [p.stat().st_mtime_ns for p in files]
    assert simulate_dataset(tmp_path / "c", opts, log=logs.append) == root
    assert logs[-1].startswith("reused") and [p.stat().st_mtime_ns for p in files] == stamps
    files[0].unlink()  # an incomplete dataset is rebuilt
    simulate_dataset(tmp_path / "c", opts, log=logs.append)
    assert logs[-1].startswith("made") and files[0].is_file()
    with pytest.raises(MrlearnError, match="other options"):
        simulate_dataset(tmp_path / "c", replace(opts, seed=5))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(MrlearnError, match="not an mrlearn dataset"):
        simulate_dataset(tmp_path / "foreign", opts)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MrlearnError, match="not a folder"):
        simulate_dataset(tmp_path / "afile", opts)


def test_default_cache_dir_follows_options_and_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MRLEARN_DATA", str(tmp_path))
    d = default_cache_dir(SMALL)
    assert d == tmp_path / "embedded" / options_hash(SMALL)
    assert default_cache_dir(replace(SMALL, snr=10.0)) != d
    monkeypatch.delenv("MRLEARN_DATA")
    assert default_cache_dir(SMALL) == Path.home() / ".cache" / "mrlearn" / "embedded" / options_hash(SMALL)


# ------------------------------------------------------------------------------------------------ splits, geometry
def test_slabs_are_consecutive_and_tr_te_jittered(small):
    m = load_manifest(small)
    spacing = m["geometry"]["slice_spacing_mm"]
    for f in m["files"]:
        p = np.array(f["slice_positions_mm"])
        np.testing.assert_allclose(np.diff(p), spacing, atol=1e-3)
        lo, hi = m["geometry"]["ranges_mm"][f["orientation"]]
        assert lo - 1e-6 <= p.min() and p.max() <= hi + 1e-6
    for c in CONTRASTS:
        tr = [f["tr_ms"] for f in m["files"] if f["acquisition"] == c]
        te = [f["te_ms"] for f in m["files"] if f["acquisition"] == c]
        assert len(set(tr)) > 1 and len(set(te)) > 1
        assert all(abs(v / PROTOCOLS[c].tr_ms - 1) <= 0.05 + 1e-6 for v in tr)
        assert all(abs(v / PROTOCOLS[c].te_ms - 1) <= 0.05 + 1e-6 for v in te)


def test_slab_points_rotation_is_a_90_degree_turn():
    anatomy = phantom_anatomy()
    layout = anatomy_layout(anatomy)
    base = sample_slab(layout, "axial", 2, 2.0, np.random.default_rng(0))
    p0 = slab_points(layout, base, (16, 16), 5.0)
    p1 = slab_points(layout, replace(base, rot90=1), (16, 16), 5.0)
    np.testing.assert_allclose(p1[:, 1:, 1:], np.rot90(p0[:, 1:, 1:], k=-1, axes=(1, 2)), atol=1e-4)


# ------------------------------------------------------------------------------------------------ targets, physics
def test_numpy_fft_twins_match_the_torch_operators():
    x = (np.random.default_rng(0).standard_normal((2, 3, 9, 8)) + 1j).astype(np.complex64)
    np.testing.assert_allclose(fft2c_np(x), fft2c(torch.from_numpy(x)).numpy(), atol=1e-5)
    np.testing.assert_allclose(ifft2c_np(x), ifft2c(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_oversampled_rss_target_equals_rss_of_stored_kspace(tmp_path):
    opts = replace(SMALL, matrix=(30, 26), oversample=True, subjects=(1, 0, 1), contrasts=("T2",), sens_maps=True)
    root = simulate_dataset(tmp_path / "os", opts)
    for f in load_manifest(root)["files"]:
        d = _read(root / f["path"])
        assert d["kspace"].shape == (4, 4, 60, 26) and d["kspace"].dtype == np.complex64
        assert d["reconstruction_rss"].shape == (4, 30, 26)
        ref = center_crop(rss(ifft2c(torch.from_numpy(d["kspace"])), dim=-3), (30, 26)).numpy()
        np.testing.assert_allclose(d["reconstruction_rss"], ref, rtol=1e-5, atol=1e-6 * ref.max())
        assert d["attrs"]["max"] == pytest.approx(float(ref.max()), rel=1e-6)
        info = read_volume_info(root / f["path"])
        assert info.recon_size == (30, 26) and info.encoding_size[:2] == (60, 26)
        assert d["sens_maps"].shape == (4, 4, 60, 26)


def test_single_coil_target_is_the_magnitude(tmp_path):
    opts = replace(SMALL, single_coil=True, subjects=(1, 0, 0), contrasts=("PD",), oversample=True)
    root = simulate_dataset(tmp_path / "sc", opts)
    f = load_manifest(root)["files"][0]
    d = _read(root / f["path"])
    assert d["kspace"].shape == (4, 64, 32) and "reconstruction_esc" in d and "reconstruction_rss" not in d
    ref = center_crop(ifft2c(torch.from_numpy(d["kspace"])).abs(), (32, 32)).numpy()
    np.testing.assert_allclose(d["reconstruction_esc"], ref, rtol=1e-5, atol=1e-6 * ref.max())


def _phantom_volume(protocol: Protocol, snr: float, *, shape=(48, 48), coils=6, single_coil=False, seed=0):
    anatomy = phantom_anatomy()
    layout = anatomy_layout(anatomy)
    rng = np.random.default_rng(seed)
    slab = sample_slab(layout, "axial", 3, 2.0, rng)
    pixel = 240.0 / max(shape)
    fractions = anatomy.fractions(slab_points(layout, slab, shape, pixel))
    vol = simulate_volume(fractions, protocol, positions_mm=slab.positions_mm, recon_hw=shape, pixel_mm=pixel,
                          coils=coils, snr=snr, single_coil=single_coil, rng=rng, keep_clean=True)
    return vol, fractions


@pytest.mark.parametrize("single_coil", [False, True])
def test_noise_matches_requested_snr(single_coil):
    snr = 20.0
    vol, _ = _phantom_volume(PROTOCOLS["PD"], snr, shape=(64, 64), single_coil=single_coil)
    # definition: sigma = mean noiseless RSS over the object / snr
    clean = ifft2c_np(vol.clean_kspace)
    mu = np.sqrt((np.abs(clean) ** 2).sum(axis=1))[vol.object_mask].mean()
    assert vol.noise_std == pytest.approx(mu / snr, rel=1e-5)
    # difference estimate: stored minus noiseless k-space is white noise of E|n|^2 = sigma^2
    kspace = vol.kspace if vol.kspace.ndim == 4 else vol.kspace[:, None]
    diff = kspace - vol.clean_kspace
    assert np.sqrt(np.mean(np.abs(diff) ** 2)) == pytest.approx(vol.noise_std, rel=0.03)
    assert np.std(diff.real) == pytest.approx(np.std(diff.imag), rel=0.05)
    # background estimate from the stored data alone: coil images outside the head (air) hold only noise
    images = ifft2c_np(kspace)
    air = np.ones_like(vol.object_mask)
    for s in range(air.shape[0]):  # stay 3 pixels away from the head
        from scipy import ndimage
        air[s] = ~ndimage.binary_dilation(vol.object_mask[s], iterations=3)
    sigma_bg = np.sqrt(np.mean(np.abs(images.transpose(1, 0, 2, 3)[:, air]) ** 2))
    assert sigma_bg == pytest.approx(vol.noise_std, rel=0.05)
    # and the measured SNR of the target over the object is the requested one (the RSS noise bias is small)
    measured = vol.target[vol.object_mask].mean() / sigma_bg
    assert measured == pytest.approx(snr, rel=0.08)


def test_snr_inf_means_no_noise():
    vol, _ = _phantom_volume(PROTOCOLS["T1"], math.inf)
    assert vol.noise_std == 0.0
    np.testing.assert_array_equal(vol.kspace, vol.clean_kspace)


# ------------------------------------------------------------------------------------------------ tissue, contrast
def test_signal_equations_closed_form():
    csf = TISSUES[TISSUE_INDEX["csf"]]
    pd = PROTOCOLS["PD"]
    expect = csf.pd * (1 - math.exp(-pd.tr_ms / csf.t1_ms)) * math.exp(-pd.te_ms / csf.t2_ms)
    assert tissue_signals(pd)[TISSUE_INDEX["csf"]] == pytest.approx(expect, rel=1e-12)
    flair = PROTOCOLS["FLAIR"]
    assert abs(tissue_signals(flair)[TISSUE_INDEX["csf"]]) < 1e-4  # TI nulls CSF at the nominal TR
    fat = TISSUE_INDEX["fat"]
    assert tissue_signals(PROTOCOLS["PDFS"])[fat] == pytest.approx(0.05 * tissue_signals(pd)[fat])
    # partial volume: a voxel's signal is the fraction-weighted sum of the compartments' signals
    f = np.zeros((len(TISSUES), 2), dtype=np.float32)
    f[TISSUE_INDEX["csf"], 0] = 1.0
    f[TISSUE_INDEX["gm"], 1], f[TISSUE_INDEX["fat"], 1] = 0.25, 0.5
    s = tissue_signals(pd)
    np.testing.assert_allclose(contrast_image(f, pd), [s[TISSUE_INDEX["csf"]], 0.25 * s[TISSUE_INDEX["gm"]] + 0.5 * s[fat]],
                               rtol=1e-6)


def test_parameter_maps_are_fraction_weighted():
    f = np.zeros((len(TISSUES), 3))
    f[TISSUE_INDEX["wm"], 0] = 1.0
    f[TISSUE_INDEX["gm"], 1], f[TISSUE_INDEX["wm"], 1] = 0.5, 0.5
    p = parameter_maps(f)
    wm, gm = TISSUES[TISSUE_INDEX["wm"]], TISSUES[TISSUE_INDEX["gm"]]
    assert p["t1_ms"][0] == pytest.approx(wm.t1_ms) and p["t2_ms"][0] == pytest.approx(wm.t2_ms)
    assert p["pd"][1] == pytest.approx(0.5 * (wm.pd + gm.pd))
    assert p["t1_ms"][1] == pytest.approx((wm.pd * wm.t1_ms + gm.pd * gm.t1_ms) / (wm.pd + gm.pd), rel=1e-6)
    assert p["pd"][2] == 0 and p["t1_ms"][2] == 0


def _pure_means(image: np.ndarray, fractions: np.ndarray) -> dict[str, float]:
    out = {}
    for t in ("csf", "gm", "wm", "fat"):
        pure = fractions[TISSUE_INDEX[t]] > 0.95
        if pure.sum() >= 3:
            out[t] = float(image[pure].mean())
    return out


def test_contrast_ordering_on_the_phantom():
    means = {}
    for c in CONTRASTS:
        vol, fractions = _phantom_volume(PROTOCOLS[c], math.inf, shape=(64, 64))
        img = np.abs(ifft2c_np(vol.clean_kspace)).sum(axis=1) / np.abs(vol.sens_maps).sum(axis=1)  # undo coils
        means[c] = _pure_means(img, fractions)
    assert means["T2"]["csf"] > means["T2"]["gm"] > means["T2"]["wm"]
    assert means["T1"]["wm"] > means["T1"]["gm"] > means["T1"]["csf"]
    assert means["FLAIR"]["csf"] < 0.2 * means["FLAIR"]["wm"] and means["FLAIR"]["gm"] > means["FLAIR"]["wm"]
    assert means["PDFS"]["fat"] < 0.1 * means["PD"]["fat"]
    assert means["PD"]["fat"] > means["PD"]["wm"]
    assert means["PDFS"]["wm"] == pytest.approx(means["PD"]["wm"], rel=1e-3)  # only fat is suppressed


# ------------------------------------------------------------------------------------------------------ MNI anatomy
def test_mni_head_and_small_dataset(tmp_path):
    anatomy = mni_anatomy(2)
    vol = anatomy.volume.astype(np.float32) / 255
    voxel_ml = anatomy.spacing_mm ** 3 / 1000
    ml = {t: float(vol[TISSUE_INDEX[t]].sum() * voxel_ml) for t in ("gm", "wm", "csf", "fat", "muscle", "bone")}
    # brain-sized (the template's probability maps are generous: GM ~1 L incl. cerebellum and partial volume)
    assert 450 < ml["gm"] < 1150 and 350 < ml["wm"] < 800
    assert all(ml[t] > 50 for t in ("csf", "fat", "muscle", "bone")), ml
    assert vol.sum(axis=0).max() <= 1.0 + 3 / 255
    # fat and muscle only outside the brain: none where GM + WM > 0.5
    brain = vol[TISSUE_INDEX["gm"]] + vol[TISSUE_INDEX["wm"]] > 0.5
    assert vol[TISSUE_INDEX["fat"]][brain].max() == 0 and vol[TISSUE_INDEX["muscle"]][brain].max() == 0
    # the lateral ventricles (MNI (+-8, 0, 20) mm) are CSF; deep white matter (28, -20, 30) is WM
    f = anatomy.fractions(np.array([[8.0, 0.0, 20.0], [-8.0, 0.0, 20.0], [28.0, -20.0, 30.0]]))
    assert f[TISSUE_INDEX["csf"], 0] > 0.5 and f[TISSUE_INDEX["csf"], 1] > 0.5 and f[TISSUE_INDEX["wm"], 2] > 0.8

    opts = SimulationOptions(matrix=(48, 40), coils=4, slices=2, subjects=(1, 1, 1), contrasts=("T2", "FLAIR"))
    root = simulate_dataset(tmp_path / "mni", opts)
    m = load_manifest(root)
    assert m["anatomy"] == "mni152_2009_2mm" and "nilearn" in m["versions"] and len(m["files"]) == 6
    means = {}
    for f in m["files"]:
        d = _read(root / f["path"])
        assert d["kspace"].shape == (2, 4, 48, 40) and np.isfinite(d["kspace"]).all()
        assert d["reconstruction_rss"].max() > 20 * d["attrs"]["noise_std"]  # an object, not noise
    # contrast ordering on MNI anatomy (noiseless): CSF bright on T2, dark on FLAIR
    layout = anatomy_layout(anatomy)
    for c in ("T2", "FLAIR"):
        rng = np.random.default_rng(0)
        slab = Slab("axial", (20.0,))
        fr = anatomy.fractions(slab_points(layout, slab, (96, 96), 2.5))
        vol_c = simulate_volume(fr, PROTOCOLS[c], positions_mm=slab.positions_mm, recon_hw=(96, 96), pixel_mm=2.5,
                                coils=1, snr=math.inf, single_coil=True, rng=rng)
        shading = np.abs(vol_c.sens_maps[:, 0])
        means[c] = _pure_means(vol_c.target / shading, fr)
    assert means["T2"]["csf"] > 1.5 * means["T2"]["gm"] > 1.5 * means["T2"]["wm"]
    assert means["FLAIR"]["csf"] < 0.3 * means["FLAIR"]["wm"]


# ------------------------------------------------------------------------------------------------ bad input, CLI
@pytest.mark.parametrize("bad", [
    {"matrix": (4, 32)}, {"matrix": (32,)}, {"slices": 0}, {"slices": (4, 4)}, {"subjects": (0, 0, 0)},
    {"subjects": (1, -1, 1)}, {"subjects": 2}, {"subjects": (1, 2)}, {"orientations": ("oblique",)},
    {"orientations": ()}, {"orientations": ("axial", "axial")}, {"first_subject": -1}, {"lesion_fraction": 1.5},
    {"lesion_fraction": True}, {"variation": "yes"},
    {"contrasts": ()}, {"contrasts": ("PD", "DWI")}, {"contrasts": ("PD", "PD")}, {"coils": 0}, {"snr": -1.0},
    {"snr": float("nan")}, {"anatomy": "brainweb"}, {"fov_mm": 10.0}, {"jitter": 0.7}, {"oversample": "yes"},
    {"seed": -3},
])
def test_bad_options_raise_one_line_errors(bad):
    with pytest.raises(MrlearnError) as exc:
        replace(SMALL, **bad)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("simulate option '") and ";" in msg


def test_options_round_trip_and_unknown_keys():
    o = replace(SMALL, snr=math.inf)
    assert SimulationOptions.from_dict(json.loads(json.dumps(o.to_dict()))) == o
    # YAML/argparse spellings of the same options (lists, ints) are the same dataset
    alike = SimulationOptions(anatomy="phantom", matrix=[32, 32], coils=4, slices=4, subjects=[3, 2, 2], seed=1, snr=30)
    assert alike == SMALL and options_hash(alike) == options_hash(SMALL)
    with pytest.raises(MrlearnError, match="unknown option"):
        SimulationOptions.from_dict({"matrx": [32, 32]})


def test_cli_simulate_makes_then_reuses(tmp_path, capsys):
    argv = ["simulate", "--out", str(tmp_path / "cli"), "--anatomy", "phantom", "--matrix", "24", "20", "--coils", "3",
            "--slices", "2", "--subjects", "1", "1", "1", "--contrasts", "PD", "PDFS", "--snr", "inf", "--seed", "4"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "made 3 subjects, 6 volumes" in out and str(tmp_path / "cli") in out
    assert "test    1 subjects (sub-0002..sub-0002; sagittal 1), 2 volumes" in out and "ventricle wall shift" in out
    assert cli_main(argv) == 0
    assert "reused" in capsys.readouterr().out
    m = load_manifest(tmp_path / "cli")
    assert m["options"]["snr"] == "inf" and m["options"]["seed"] == 4
    assert cli_main(argv[:-1] + ["5"]) == 2  # same folder, other options
    err = capsys.readouterr().err
    assert err.startswith("mrlearn: error: ") and err.count("\n") == 1
    assert cli_main(["simulate", "--out", str(tmp_path / "x"), "--contrasts", "PD", "DWI"]) == 2
    assert "unknown contrast 'DWI'" in capsys.readouterr().err


def test_config_data_embedded_picks_the_simulated_dataset(monkeypatch, tmp_path):
    """``data.embedded`` overrides the embedded dataset's options (only while ``data.root`` is None); a key the
    simulator does not take, or a bad value, is a one-line error when the config is read."""
    from mrlearn.config import config_from_dict, embedded_options
    from mrlearn.training.data import resolve_root

    monkeypatch.setenv("MRLEARN_DATA", str(tmp_path))
    given = {"anatomy": "phantom", "matrix": [16, 16], "coils": 2, "slices": 1, "subjects": [1, 1, 1],
             "contrasts": ["PD"]}
    cfg = config_from_dict({"data": {"embedded": given}})
    options = embedded_options(cfg.data)
    assert options == SimulationOptions(anatomy="phantom", matrix=(16, 16), coils=2, slices=1, subjects=(1, 1, 1),
                                        contrasts=("PD",))
    root = resolve_root(cfg)
    assert root == default_cache_dir(options)
    files = sorted(root.glob("*/*.h5"))
    assert len(files) == 3 and _read(files[0])["reconstruction_rss"].shape[-2:] == (16, 16)
    assert embedded_options(config_from_dict({}).data) == SimulationOptions()
    with pytest.raises(MrlearnError, match=r"data\.embedded\.matrx.*unknown simulation option"):
        config_from_dict({"data": {"embedded": {"matrx": [16, 16]}}})
    with pytest.raises(MrlearnError, match="matrix"):
        config_from_dict({"data": {"embedded": {"matrix": [4, 16]}}})
