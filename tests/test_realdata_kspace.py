"""A real-looking 2-D Poisson-undersampled acquisition end to end, as a new user runs it (no data downloaded).

Synthetic stand-in for a scanner file: a 230 x 180 slice, 8 coils (smooth simulated sensitivities), complex
noise, a variable-density Poisson-disc mask of about 8x with a 20 x 20 calibration box, zeros where nothing was
sampled; written as BART ``.cfl`` in the standard ``[X, Y, 1, coils]`` layout and as ``[1, ky, kz, coils]`` (a
slice of a 3-D acquisition). ``mrlearn convert --undersampled`` must find the 2-D pattern in both, and
``mrlearn reconstruct`` must then match BART on the same data (ESPIRiT maps from the data on each side: ours
inside ``reconstruct``, BART's by ``bart ecalib``): CS-L1 within 1 dB of ``bart pics -l1 -r 0.005`` or better,
TV within 0.5 dB of ``-R T:3:0:0.002`` or better, CG-SENSE within 0.1 dB of ``-l2`` (PSNR of the magnitude
against the fully sampled SENSE combination with BART's maps; BART comparisons skip without ``bart``). Every
classical method and ``--set`` options run on a 2-D-mask file; no calibration box is a one-line error naming the
file; both networks train a few steps on Poisson masks and reconstruct a file that carries its own 2-D mask
(and really use it: the output depends only on the sampled data).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mrlearn.cli import main
from mrlearn.data.cfl import read_cfl, write_cfl
from mrlearn.data.fastmri import read_kspace, read_mask, read_reconstruction, read_volume_info
from mrlearn.physics.coils import simulate_coil_maps
from mrlearn.physics.fft import fft2c
from mrlearn.physics.masks.poisson import PoissonDiscMaskFunc
from mrlearn.physics.sense import sense_adjoint
from mrlearn.recon import reconstruct

H, W, COILS = 230, 180, 8
needs_bart = pytest.mark.skipif(shutil.which("bart") is None, reason="BART not installed")


def _phantom(h: int, w: int) -> np.ndarray:
    """Complex ellipse phantom ``[h, w]`` with a few inserts and a smooth phase."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    img = ((yy / 0.85) ** 2 + (xx / 0.7) ** 2 < 1) * 1.0 - 0.6 * (((yy - 0.2) / 0.3) ** 2 + (xx / 0.25) ** 2 < 1)
    img = img + 0.4 * (((yy + 0.35) / 0.12) ** 2 + ((xx - 0.2) / 0.2) ** 2 < 1)
    img = img + 0.3 * (((yy + 0.1) / 0.08) ** 2 + ((xx + 0.3) / 0.05) ** 2 < 1)
    return img * np.exp(1j * 0.5 * yy)


def _bart_std(k: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` -> BART ``[H, W, 1, C]``."""
    return np.transpose(k, (1, 2, 0))[:, :, None, :]


@pytest.fixture(scope="module")
def acquisition(tmp_path_factory) -> dict:
    """The 8x Poisson acquisition as BART files in both layouts, converted by ``mrlearn convert --undersampled``."""
    root = tmp_path_factory.mktemp("acq")
    maps = simulate_coil_maps((H, W), COILS, rng=0)
    full = fft2c(torch.from_numpy((maps * _phantom(H, W)).astype(np.complex64))).numpy()
    rng = np.random.default_rng(0)
    full = (full + 0.002 * np.abs(full).max() * (rng.standard_normal(full.shape) + 1j * rng.standard_normal(full.shape)))
    mask, _ = PoissonDiscMaskFunc([8], calib=(20, 20))((H, W), seed=0)
    mask = np.asarray(mask, dtype=bool).reshape(H, W)
    ksp = (full * mask).astype(np.complex64)
    write_cfl(root / "std", _bart_std(ksp))
    write_cfl(root / "kykz", np.transpose(ksp, (1, 2, 0))[None])  # [1, ky, kz, coils]
    for name in ("std", "kykz"):
        assert main(["convert", "--undersampled", str(root / name), str(root / "h5" / name / f"{name}.h5")]) == 0
    return dict(root=root, full=full.astype(np.complex64), ksp=ksp, mask=mask)


def test_convert_undersampled_finds_the_2d_poisson_pattern_in_both_layouts(acquisition):
    a = acquisition
    for name in ("std", "kykz"):
        path = a["root"] / "h5" / name / f"{name}.h5"
        info = read_volume_info(path)
        assert info.kspace_shape == (1, COILS, H, W)
        np.testing.assert_array_equal(read_kspace(path)[0], a["ksp"])
        np.testing.assert_array_equal(np.asarray(read_mask(path)).astype(bool).reshape(H, W), a["mask"])
        assert info.attrs["acceleration"] == pytest.approx(a["mask"].size / a["mask"].sum())
        assert 7.5 < info.attrs["acceleration"] < 8.5
        box = [int(v) for v in info.attrs["calibration_box"]]
        assert box[0] >= 20 and box[1] >= 20 and a["mask"][H // 2 - 10:H // 2 + 10, W // 2 - 10:W // 2 + 10].all()
        assert info.attrs["bart_layout"] == ("standard" if name == "std" else "kykz-slice")


def _psnr(gt: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(gt.max() ** 2 / np.mean((np.abs(x) - gt) ** 2)))


@pytest.fixture(scope="module")
def bart_reference(acquisition) -> dict:
    """``bart ecalib`` maps of the undersampled file and the ground truth (fully sampled SENSE combination)."""
    root = acquisition["root"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(["bart", "ecalib", "-m1", "std", "sens"], cwd=root, env=env, check=True, capture_output=True)
    sens = np.ascontiguousarray(np.transpose(read_cfl(root / "sens").reshape(H, W, COILS), (2, 0, 1)))
    gt = sense_adjoint(torch.from_numpy(acquisition["full"])[None], torch.from_numpy(sens)[None]).abs()[0].numpy()
    return dict(env=env, gt=gt)


@needs_bart
@pytest.mark.parametrize("method,reg,margin", [("cs-l1", ["-l1", "-r", "0.005"], 1.0),
                                               ("tv", ["-R", "T:3:0:0.002"], 0.5),
                                               ("cg-sense", ["-l2", "-r", "0.01"], 0.1)])
def test_reconstruct_matches_bart_pics_on_the_converted_acquisition(acquisition, bart_reference, method, reg,
                                                                   margin, tmp_path):
    root, gt = acquisition["root"], bart_reference["gt"]
    subprocess.run(["bart", "pics", "-S", *reg, "std", "sens", f"img_{method}"], cwd=root, env=bart_reference["env"],
                   check=True, capture_output=True)
    theirs = _psnr(gt, read_cfl(root / f"img_{method}").reshape(H, W))
    assert main(["reconstruct", "--method", method, "--data", str(root / "h5" / "std"), "--out", str(tmp_path)]) == 0
    ours_img = read_reconstruction(tmp_path / "std.h5")
    assert ours_img.shape == (1, H, W)
    ours = _psnr(gt, ours_img[0])
    zf = _psnr(gt, reconstruct(acquisition["ksp"], None, "zero-filled"))
    assert theirs > zf  # the comparison is not between two failures
    if method == "cg-sense":
        assert abs(ours - theirs) <= margin, (ours, theirs)
    else:
        assert ours >= theirs - margin, (ours, theirs)


@pytest.mark.parametrize("method,options", [
    ("zero-filled", []),
    ("sense", ["calib_size=12", "kernel_size=4"]),
    ("cg-sense", ["lam=0.02", "max_iter=10", "crop=0.5"]),
    ("cs-l1", ["lam=0.01", "max_iter=10", "lambda_convention=max"]),
    ("tv", ["lam=0.001", "max_iter=5", "threshold=0.01", "recon_size=[100,96]"]),
])
def test_every_classical_method_and_set_options_on_a_2d_mask_file(tmp_path, method, options):
    """A 96 x 80 crop with a 2-D random mask and a 12 x 5 calibration box (24 x 5-like, not square)."""
    ksp, mask = _small_2d_file(tmp_path, box=(slice(42, 54), slice(38, 43)))
    sets = [a for o in options for a in ("--set", o)]
    assert main(["reconstruct", "--method", method, "--data", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 *sets]) == 0
    rec = read_reconstruction(tmp_path / "out" / "s.h5")
    assert rec.shape == ((1, 100, 96) if method == "tv" else (1, 96, 80)) and np.isfinite(rec).all()
    assert (rec > 1e-3 * rec.max()).mean() > 0.3  # not a black image


def _small_2d_file(tmp_path: Path, box: tuple[slice, slice] | None, crop_size: tuple[int, int] = (96, 80)):
    """A cropped slice of the phantom with a 2-D random mask (``box`` fully sampled), written as ``in/s.h5``."""
    h, w = crop_size
    maps = simulate_coil_maps((h, w), 6, rng=1)
    full = fft2c(torch.from_numpy((maps * _phantom(h, w)).astype(np.complex64))).numpy()
    rng = np.random.default_rng(2)
    mask = rng.random((h, w)) < 0.3
    mask[h // 2 - 2:h // 2 + 2, w // 2 - 2:w // 2 + 3] = False  # the centre: a 2 x 3 sampled block in a gap
    mask[h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 2] = True
    if box is not None:
        mask[box] = True
    ksp = (full * mask).astype(np.complex64)
    write_cfl(tmp_path / "s", _bart_std(ksp))
    assert main(["convert", "--undersampled", str(tmp_path / "s"), str(tmp_path / "in" / "s.h5")]) == 0
    return ksp, mask


def test_no_calibration_box_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    _small_2d_file(tmp_path, box=None)
    capsys.readouterr()
    for method in ("cg-sense", "cs-l1"):
        assert main(["reconstruct", "--method", method, "--data", str(tmp_path / "in"),
                     "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("mrlearn: error: s.h5: kspace: only a 2 x 3 fully sampled centre box"), err
        assert "pass sens_maps" in err
    assert main(["reconstruct", "--method", "zero-filled", "--data", str(tmp_path / "in"),
                 "--out", str(tmp_path / "out")]) == 0  # needs no maps
    _small_2d_file(tmp_path, box=(slice(42, 54), slice(38, 43)))
    assert main(["reconstruct", "--method", "sense", "--set", "calib_size=2", "--data", str(tmp_path / "in"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "calib_size" in capsys.readouterr().err


def test_map_support_that_loses_the_image_warns_and_falls_back(tmp_path, capsys):
    """A cropped ESPIRiT support that keeps almost none of the image: one warning line naming the file, and the
    image is not blacked out (maps recomputed without crop)."""
    _small_2d_file(tmp_path, box=(slice(42, 54), slice(38, 43)))
    capsys.readouterr()
    assert main(["reconstruct", "--method", "cg-sense", "--set", "crop=0.95", "--set", "calib_size=6",
                 "--data", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "warning" in line]
    assert len(lines) == 1 and "s.h5: ESPIRiT map support keeps only" in lines[0] and "without crop" in lines[0]
    rec = read_reconstruction(tmp_path / "out" / "s.h5")
    assert (rec > 1e-3 * rec.max()).mean() > 0.9


# ---- networks on Poisson masks -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from helpers_training import tiny_dataset

    return tiny_dataset(tmp_path_factory.mktemp("net") / "data")


def _config(name: str, data: Path, path: Path) -> Path:
    """The demo config of ``name`` shrunk to a few steps, trained on Poisson masks (8 x 8 box, 3x at 32 x 32)."""
    import mrlearn.config

    cfg = yaml.safe_load((Path(mrlearn.config.__file__).parent / "configs" / f"{name}_demo.yaml").read_text())
    cfg["mask"] = {"name": "poisson", "accelerations": [3], "calib": [8, 8]}
    cfg["data"].update(root=str(data), contrasts=None, batch_size=2)
    cfg["model"].update(chans=4, **({"num_pool_layers": 2} if name == "unet" else {"cascades": 2, "num_blocks": 1}))
    cfg["trainer"].update(max_epochs=1, max_steps=2, accelerator="cpu", progress_bar=False, val_every=1)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("name", ["unet", "unrolled"])
def test_networks_train_on_poisson_masks_and_use_a_files_2d_mask(tiny_data, tmp_path, name):
    from mrlearn.api.volumes import write_volume

    cfg = _config(name, tiny_data, tmp_path / f"{name}.yaml")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    k = read_kspace(sorted((tiny_data / "test").glob("*.h5"))[0])
    m1 = np.asarray(PoissonDiscMaskFunc([3], calib=(8, 8))(k.shape[-2:], seed=1)[0], dtype=bool).reshape(k.shape[-2:])
    m2 = np.asarray(PoissonDiscMaskFunc([3], calib=(8, 8))(k.shape[-2:], seed=2)[0], dtype=bool).reshape(k.shape[-2:])
    attrs = {"acceleration": 3.0, "num_low_frequency": 8}
    files = {"a": (k * m1, m1), "b": (k, m1), "c": (k * m2, m2)}  # b: unsampled data present, mask says skip it
    for key, (kk, mm) in files.items():
        write_volume(tmp_path / "test" / f"{key}.h5", kk.astype(np.complex64), acquisition="CORPD_FBK", mask=mm,
                     attrs=attrs)
    ckpt = next((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert main(["reconstruct", "--checkpoint", str(ckpt), "--data", str(tmp_path / "test"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    rec = {key: read_reconstruction(tmp_path / "out" / f"{key}.h5") for key in files}
    assert rec["a"].shape == k.shape[:1] + k.shape[-2:] and np.isfinite(rec["a"]).all()
    np.testing.assert_allclose(rec["b"], rec["a"], rtol=1e-4, atol=1e-5 * float(np.abs(rec["a"]).max()))
    assert np.abs(rec["c"] - rec["a"]).max() > 1e-3 * np.abs(rec["a"]).max()
