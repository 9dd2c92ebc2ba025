"""``mrlearn evaluate``: pairing, cropping, fastMRI numbers against skimage, outputs, and one-line errors."""

import csv
import json

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mrlearn.cli import main
from mrlearn.data.fastmri import write_reconstruction, write_volume
from mrlearn.errors import MrlearnError
from mrlearn.evaluation.evaluate import (
    VolumePair,
    evaluate_folders,
    evaluate_volumes,
    match_prediction,
    summarise,
)


def _target(seed, shape=(3, 20, 18)):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[1], : shape[2]]
    base = np.exp(-((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2) / 40.0)
    return (base[None] * rng.uniform(0.5, 2.0, (shape[0], 1, 1)) + 0.05 * rng.random(shape)).astype(np.float32)


def _write_target(path, target, acq):
    s, h, w = target.shape
    kspace = np.zeros((s, 2, h + 4, w), np.complex64)  # contents irrelevant to scoring
    write_volume(path, kspace, target=target, acquisition=acq)


def _make(tmp_path, specs, pad=((0, 0), (0, 0), (0, 0))):
    """specs: (name, acquisition, noise); returns (target dir, pred dir, {name: (target, pred)})."""
    tdir, pdir = tmp_path / "targets", tmp_path / "preds"
    arrays = {}
    for i, (name, acq, noise) in enumerate(specs):
        t = _target(i)
        p = (t + noise * np.random.default_rng(100 + i).standard_normal(t.shape)).astype(np.float32)
        _write_target(tdir / name, t, acq)
        write_reconstruction(pdir / name, np.pad(p, pad, constant_values=7.0))
        arrays[name] = (t, p)
    return tdir, pdir, arrays


def _reference(t, p, square=True):
    """fastMRI's evaluation written with numpy/skimage directly (``t``, ``p`` of the same size, uncropped).

    fastMRI's evaluate.py crops target and prediction to (w, w), w the target's width, from row (h - w) // 2.
    """
    t64, p64 = t.astype(np.float64), p.astype(np.float64)
    h, w = t.shape[-2:]
    if square and h > w:
        t64, p64 = t64[:, (h - w) // 2:(h - w) // 2 + w], p64[:, (h - w) // 2:(h - w) // 2 + w]
    vmax = t64.max()
    return {
        "nmse": np.linalg.norm(t64 - p64) ** 2 / np.linalg.norm(t64) ** 2,
        "psnr": peak_signal_noise_ratio(t64, p64, data_range=vmax),
        "ssim": np.mean([structural_similarity(t64[s], p64[s], data_range=vmax) for s in range(t.shape[0])]),
    }


def test_evaluate_folders_matches_reference_and_writes_outputs(tmp_path, capsys):
    specs = [("file_a.h5", "CORPD_FBK", 0.02), ("file_b.h5", "CORPDFS_FBK", 0.05), ("file_c.h5", "CORPD_FBK", 0.1)]
    tdir, pdir, arrays = _make(tmp_path, specs, pad=((0, 0), (2, 3), (1, 2)))  # larger predictions: centre-cropped (fastMRI offsets)
    out = tmp_path / "out"
    assert main(["evaluate", "--target", str(tdir), "--pred", str(pdir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "file_b.h5" in printed and "CORPDFS_FBK" in printed and "mean" in printed

    with open(out / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["volume", "acquisition", "nmse", "psnr", "ssim"]
        rows = list(reader)
    per_volume = {r["volume"]: r for r in rows if r["volume"].endswith(".h5")}
    assert sorted(per_volume) == ["file_a.h5", "file_b.h5", "file_c.h5"]
    for name, (t, p) in arrays.items():
        ref = _reference(t, p)
        assert per_volume[name]["acquisition"] == dict((s[0], s[1]) for s in specs)[name]
        for m in ("nmse", "psnr", "ssim"):
            assert float(per_volume[name][m]) == pytest.approx(ref[m], rel=1e-6, abs=1e-7)

    report = json.loads((out / "metrics.json").read_text())
    assert report["missing_predictions"] == []
    pd_vals = [_reference(*arrays[n])["psnr"] for n in ("file_a.h5", "file_c.h5")]
    assert report["summary"]["by_contrast"]["CORPD_FBK"]["psnr"]["mean"] == pytest.approx(np.mean(pd_vals), rel=1e-6)
    assert report["summary"]["by_contrast"]["CORPD_FBK"]["psnr"]["std"] == pytest.approx(np.std(pd_vals, ddof=1), rel=1e-5)
    all_ssim = [_reference(*arrays[n])["ssim"] for n in per_volume]
    assert report["summary"]["all"]["ssim"]["mean"] == pytest.approx(np.mean(all_ssim), rel=1e-6)
    mean_all = next(r for r in rows if r["volume"] == "mean" and r["acquisition"] == "all")
    assert float(mean_all["ssim"]) == pytest.approx(np.mean(all_ssim), rel=1e-6)
    assert not list(out.glob("*.tmp"))
    assert report["square_crop"] is True


def test_square_crop_is_fastmri_default_and_optional(tmp_path):
    """A 20 x 18 target is scored on its central 18 x 18 (as fastMRI); --no-square-crop scores it whole."""
    tdir, pdir, arrays = _make(tmp_path, [("a.h5", "PD", 0.05)])
    (t, p), = arrays.values()
    assert t.shape[-2:] == (20, 18)
    cropped = evaluate_folders(tdir, pdir, tmp_path / "o1")["rows"][0]
    assert main(["evaluate", "--target", str(tdir), "--pred", str(pdir), "--out", str(tmp_path / "o2"),
                 "--no-square-crop"]) == 0
    whole = json.loads((tmp_path / "o2" / "metrics.json").read_text())["volumes"][0]
    for m in ("nmse", "psnr", "ssim"):
        assert cropped[m] == pytest.approx(_reference(t, p)[m], rel=1e-6, abs=1e-7)
        assert whole[m] == pytest.approx(_reference(t, p, square=False)[m], rel=1e-6, abs=1e-7)
    assert cropped["psnr"] != pytest.approx(whole["psnr"], rel=1e-4)
    wide = np.ones((1, 8, 12))  # wider than tall: kept whole (fastMRI's script cannot crop it to (12, 12))
    assert evaluate_volumes([("w", wide, wide * 0.5)])[0]["slices"] == 1


def test_contrast_filter_and_missing_predictions(tmp_path, capsys):
    specs = [("a.h5", "PD", 0.02), ("b.h5", "PDFS", 0.02), ("c.h5", "PD", 0.02)]
    tdir, pdir, _ = _make(tmp_path, specs)
    (pdir / "c.h5").unlink()  # a target without prediction: reported, not scored
    result = evaluate_folders(tdir, pdir, tmp_path / "o")
    assert [r["volume"] for r in result["rows"]] == ["a.h5", "b.h5"]
    assert result["missing"] == ["c.h5"]
    assert json.loads(result["json"].read_text())["missing_predictions"] == ["c.h5"]
    assert main(["evaluate", "--target", str(tdir), "--pred", str(pdir), "--out", str(tmp_path / "o2")]) == 0
    assert "c.h5" in capsys.readouterr().err
    only = evaluate_folders(tdir, pdir, tmp_path / "o3", contrasts=["PDFS"])
    assert [r["volume"] for r in only["rows"]] == ["b.h5"] and only["missing"] == []
    assert set(only["summary"]["by_contrast"]) == {"PDFS"}


def test_default_output_folder_is_the_prediction_folder(tmp_path):
    tdir, pdir, _ = _make(tmp_path, [("a.h5", "PD", 0.02)])
    result = evaluate_folders(tdir, pdir)
    assert result["csv"] == pdir / "metrics.csv" and result["json"].exists()
    again = evaluate_folders(tdir, pdir)  # the written csv/json do not count as volumes
    assert len(again["rows"]) == 1


def test_evaluate_volumes_on_arrays_closed_form():
    t = np.ones((2, 8, 8))
    t[:, 0, 0] = 2.0
    p = t * 0.9
    (row,) = evaluate_volumes([("vol", t, p, "PD")])
    assert row["nmse"] == pytest.approx(0.01)
    mse = np.mean((0.1 * t) ** 2)
    assert row["psnr"] == pytest.approx(10 * np.log10(4.0 / mse))
    assert row["slices"] == 2 and row["acquisition"] == "PD"
    perfect = evaluate_volumes([VolumePair("v", t, t)])[0]
    assert perfect["nmse"] == 0 and perfect["psnr"] == np.inf and perfect["ssim"] == pytest.approx(1.0)
    s = summarise([row, {**row, "psnr": row["psnr"] + 2, "acquisition": "T2"}])
    assert s["all"]["volumes"] == 2 and s["all"]["psnr"]["mean"] == pytest.approx(row["psnr"] + 1)
    assert s["all"]["psnr"]["std"] == pytest.approx(np.sqrt(2.0))  # sample std (ddof = 1) of x and x + 2
    assert np.isnan(s["by_contrast"]["T2"]["psnr"]["std"])  # one volume: the sample std is undefined


def test_prediction_is_cropped_about_the_centre():
    t = np.arange(2 * 6 * 7, dtype=np.float64).reshape(2, 6, 7)
    big = np.pad(t, ((0, 0), (1, 2), (3, 3)), constant_values=-1)  # offset (9 - 6) // 2 = 1 as fastMRI
    np.testing.assert_array_equal(match_prediction(t, big), t)
    t = np.arange(2 * 5 * 7, dtype=np.float64).reshape(2, 5, 7)
    big = np.pad(t, ((0, 0), (2, 3), (1, 2)), constant_values=-1)  # 10 -> 5 rows: from (10 - 5) // 2 = 2, not 3
    np.testing.assert_array_equal(match_prediction(t, big), t)


@pytest.mark.parametrize("case,match", [
    ("slices", "slices but the target has"),
    ("smaller", "smaller than the target"),
    ("nan", "NaN or Inf"),
])
def test_shape_and_value_errors(tmp_path, case, match):
    tdir = tmp_path / "t"
    pdir = tmp_path / "p"
    t = _target(0)
    _write_target(tdir / "x.h5", t, "PD")
    p = {"slices": t[:2], "smaller": t[:, :, 1:], "nan": np.where(t > 0.5, np.nan, t)}[case]
    write_reconstruction(pdir / "x.h5", p)
    with pytest.raises(MrlearnError, match=match) as exc:
        evaluate_folders(tdir, pdir, tmp_path / "o")
    assert "\n" not in str(exc.value) and "x.h5" in str(exc.value)


def test_folder_errors_are_one_line_and_exit_2(tmp_path, capsys):
    tdir, pdir, _ = _make(tmp_path, [("a.h5", "PD", 0.02)])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a volume")
    write_reconstruction(tmp_path / "extra" / "zzz.h5", _target(1))
    cases = [
        (["--target", str(tmp_path / "nope"), "--pred", str(pdir)], "folder not found"),
        (["--target", str(tdir), "--pred", str(empty)], "no .h5 files"),
        (["--target", str(tdir), "--pred", str(pdir / "a.h5")], "is a file"),
        (["--target", str(tdir), "--pred", str(tmp_path / "extra")], "no target file of that name"),
        (["--target", str(tdir), "--pred", str(pdir), "--contrast", "T1"], "unknown contrast"),
    ]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.h5").write_bytes(b"this is not HDF5")
    outfile = tmp_path / "outfile"
    outfile.write_text("x")
    cases += [
        (["--target", str(tdir), "--pred", str(bad)], "not an HDF5 file"),
        (["--target", str(tdir), "--pred", str(pdir), "--out", str(outfile)], "is a file"),
    ]
    for argv, match in cases:
        assert main(["evaluate", *argv, *([] if "--out" in argv else ["--out", str(tmp_path / "o")])]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mrlearn: error:") and match in err and "\n" not in err, err


def test_target_file_without_target_dataset(tmp_path):
    tdir, pdir = tmp_path / "t", tmp_path / "p"
    write_volume(tdir / "x.h5", np.zeros((2, 1, 8, 8), np.complex64), acquisition="PD",
                 mask=np.ones(8), attrs={"acceleration": 1})
    write_reconstruction(pdir / "x.h5", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(MrlearnError, match="no target dataset"):
        evaluate_folders(tdir, pdir, tmp_path / "o")
