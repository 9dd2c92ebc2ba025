"""`mrlearn simulate --from-images` (NIfTI, BART images, fastMRI targets) and the noiseless reference of simulations."""

import math

import h5py
import nibabel as nib
import numpy as np
import pytest

from helpers_data import smooth_image, write_test_volume
from mrlearn.cli import main
from mrlearn.data.cfl import write_cfl
from mrlearn.data.dataset import SliceDataset
from mrlearn.data.fastmri import read_kspace, read_sens_maps, read_target, read_volume_info
from mrlearn.data.simulate import SimulationOptions, simulate_dataset
from mrlearn.data.simulate.from_images import simulate_from_images
from mrlearn.errors import MrlearnError


def _rss_of_coil_images(k, crop):
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k.astype(np.complex128), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    r = np.sqrt((np.abs(img) ** 2).sum(axis=1))
    h, w = r.shape[-2:]
    top, left = h // 2 - crop[0] // 2, w // 2 - crop[1] // 2
    return r[:, top: top + crop[0], left: left + crop[1]]


def _nifti(path, vol, zooms=(1.5, 1.5, 3.0)):
    nib.save(nib.Nifti1Image(vol, np.diag(list(zooms) + [1.0])), str(path))
    return path


def _magnitude_volume(h=24, w=20, s=3):
    return np.stack([np.abs(smooth_image(h, w, k)) * 100 for k in range(s)], axis=-1).astype(np.float32)  # [i, j, k]


@pytest.mark.parametrize("oversample", [False, True])
def test_nifti_to_files_read_by_slice_dataset(tmp_path, oversample):
    vol = _magnitude_volume()
    (tmp_path / "in").mkdir()
    _nifti(tmp_path / "in" / "sub01.nii.gz", vol)
    args = ["simulate", "--from-images", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--coils", "4",
            "--acquisition", "T1W", "--sens-maps"] + (["--oversample"] if oversample else [])
    assert main(args) == 0
    path = tmp_path / "out" / "sub01.h5"
    info = read_volume_info(path)
    h_k = 48 if oversample else 24
    assert info.kspace_shape == (3, 4, h_k, 20) and info.recon_size == (24, 20) and info.acquisition == "T1W"
    k = read_kspace(path)
    target = read_target(path)
    # the target is the RSS of the fully sampled coil images, centre-cropped to the image size
    np.testing.assert_allclose(target, _rss_of_coil_images(k, (24, 20)), rtol=1e-4, atol=1e-5 * target.max())
    # the noiseless reference is the user's anatomy times the coil shading (RSS of the maps), to float32 rounding
    clean = read_target(path, noiseless=True)
    shading = np.sqrt((np.abs(read_sens_maps(path)) ** 2).sum(axis=1))
    top = h_k // 2 - 12
    np.testing.assert_allclose(clean, np.moveaxis(vol, 2, 0) * shading[:, top: top + 24], rtol=1e-4, atol=1e-4 * clean.max())
    ds = SliceDataset(tmp_path / "out")
    assert len(ds) == 3 and ds[2]["target"].shape == (24, 20) and ds[2]["target_noiseless"].shape == (24, 20)
    # noise was added at the requested SNR: the noisy and noiseless targets differ, but not by much
    rel = np.linalg.norm(target - clean) / np.linalg.norm(clean)
    assert 1e-3 < rel < 0.2


def test_complex_bart_image_keeps_its_phase_and_snr_inf_is_noiseless(tmp_path):
    imgs = np.stack([smooth_image(20, 16, k) for k in range(2)], axis=-1)  # [X, Y, Z] complex
    write_cfl(tmp_path / "img", imgs)
    written = simulate_from_images(tmp_path / "img", tmp_path / "out", coils=3, snr=math.inf, seed=4)
    assert [p.name for p in written] == ["img.h5"]
    with h5py.File(written[0]) as f:
        assert f.attrs["input_kind"] == "complex" and f.attrs["acquisition"] == "UNKNOWN"
    np.testing.assert_array_equal(read_target(written[0]), read_target(written[0], noiseless=True))


def test_fastmri_targets_as_input_keep_acquisition(tmp_path):
    write_test_volume(tmp_path / "in" / "knee.h5", acquisition="CORPD_FBK")  # target [2, 8, 12]
    written = simulate_from_images(tmp_path / "in", tmp_path / "out", coils=2, seed=1, single_coil=True)
    info = read_volume_info(written[0])
    assert info.acquisition == "CORPD_FBK" and info.single_coil and info.target_key == "reconstruction_esc"
    assert info.kspace_shape == (2, 8, 12)


def test_same_seed_same_kspace_and_bad_inputs(tmp_path):
    _nifti(tmp_path / "a.nii", _magnitude_volume())
    a = read_kspace(simulate_from_images(tmp_path / "a.nii", tmp_path / "o1", coils=2, seed=3)[0])
    b = read_kspace(simulate_from_images(tmp_path / "a.nii", tmp_path / "o2", coils=2, seed=3)[0])
    np.testing.assert_array_equal(a, b)
    _nifti(tmp_path / "neg.nii", -_magnitude_volume())
    with pytest.raises(MrlearnError, match="neg.nii: real images with negative values"):
        simulate_from_images(tmp_path / "neg.nii", tmp_path / "o3")
    _nifti(tmp_path / "tiny.nii", np.ones((3, 3, 2), np.float32))
    with pytest.raises(MrlearnError, match="tiny.nii: k-space matrix 3 x 3 is too small"):
        simulate_from_images(tmp_path / "tiny.nii", tmp_path / "o3")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(MrlearnError, match="not an image file"):
        simulate_from_images(tmp_path / "x.txt", tmp_path / "o3")
    assert main(["simulate", "--from-images", str(tmp_path / "a.nii"), "--out", str(tmp_path / "o4"), "--matrix", "64", "64"]) == 2


def test_embedded_files_store_the_noiseless_reference(tmp_path):
    opts = SimulationOptions(matrix=(32, 32), slices=2, subjects=(1, 0, 0), contrasts=("PD",), coils=4,
                             anatomy="phantom", oversample=True, seed=1)
    root = simulate_dataset(tmp_path / "d", opts)
    path = next((root / "train").glob("*.h5"))
    target, clean = read_target(path), read_target(path, noiseless=True)
    assert clean.shape == target.shape == (2, 32, 32)
    rel = np.linalg.norm(target - clean) / np.linalg.norm(clean)
    assert 1e-3 < rel < 0.2  # SNR 30: close, not equal
    s = SliceDataset(root / "train", target_size=(30, 30))[1]
    assert s["target_noiseless"].shape == (30, 30)
    np.testing.assert_array_equal(s["target_noiseless"], clean[1, 1:31, 1:31])
    noiseless_opts = SimulationOptions(**{**opts.to_dict(), "snr": math.inf})
    p2 = next((simulate_dataset(tmp_path / "e", noiseless_opts) / "train").glob("*.h5"))
    np.testing.assert_allclose(read_target(p2), read_target(p2, noiseless=True), rtol=1e-5, atol=1e-6 * clean.max())
