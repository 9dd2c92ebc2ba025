"""BART layouts in `mrlearn convert` (built synthetically with data/cfl.py) and 2-D sampling patterns found in data."""

import numpy as np
import pytest

from helpers_data import make_kspace
from mrlearn.cli import main
from mrlearn.data.bart_axes import classify_axis
from mrlearn.data.cfl import write_cfl
from mrlearn.data.convert import bart_to_fastmri
from mrlearn.data.dataset import SliceDataset
from mrlearn.data.fastmri import read_kspace, read_mask, read_sens_maps, read_volume_info
from mrlearn.data.sampling import calibration_box, describe_pattern
from mrlearn.errors import MrlearnError


def _fft(x, axes):
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)


def _coil_images(shape, coils, seed=0):
    """Smooth complex coil images ``shape + (coils,)`` of a 3-D blob object (x, y, z)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    obj = np.exp(-sum(g ** 2 for g in grids) / 0.25) * np.exp(1j * 0.4 * grids[0])
    maps = [np.exp(-((grids[0] - np.cos(a)) ** 2 + (grids[1] - np.sin(a)) ** 2)) * np.exp(1j * a)
            for a in rng.uniform(0, 2 * np.pi, coils)]
    return np.stack([obj * m for m in maps], axis=-1).astype(np.complex64)


def _slices_2d(s=3, c=4, h=24, w=20):
    return make_kspace(s, c, h, w, seed=3)  # [S, C, H, W]


def test_standard_layout_is_unchanged(tmp_path):
    k = _slices_2d()
    write_cfl(tmp_path / "k", np.transpose(k, (2, 3, 1, 0)).reshape(24, 20, 1, 4, *(1,) * 9, 3))
    p = bart_to_fastmri(tmp_path / "k", tmp_path / "k.h5")
    np.testing.assert_array_equal(read_kspace(p), k)
    assert read_volume_info(p).attrs["bart_layout"] == "standard"


def test_ky_kz_slice_of_3d_acquisition_is_one_slice(tmp_path):
    k = _slices_2d(s=1, h=30, w=22)[0]  # [C, ky, kz]
    write_cfl(tmp_path / "k", np.transpose(k, (1, 2, 0))[None])  # BART [1, ky, kz, coils]
    p = bart_to_fastmri(tmp_path / "k", tmp_path / "k.h5")
    info = read_volume_info(p)
    assert info.kspace_shape == (1, 4, 30, 22) and info.num_slices == 1  # one slice of ky x kz
    np.testing.assert_array_equal(read_kspace(p)[0], k)
    # with slices in dim 13: one ky x kz slice per entry
    k3 = _slices_2d(s=2, h=30, w=22)
    write_cfl(tmp_path / "k3", np.transpose(k3, (2, 3, 1, 0)).reshape(1, 30, 22, 4, *(1,) * 9, 2))
    np.testing.assert_array_equal(read_kspace(bart_to_fastmri(tmp_path / "k3", tmp_path / "k3.h5")), k3)


def test_coils_in_dim2_are_taken_as_coils_when_stated(tmp_path, capsys):
    k = _slices_2d(s=1)[0]  # [C, H, W]
    write_cfl(tmp_path / "k", np.transpose(k, (1, 2, 0)))  # BART [X, Y, C] (coils left in dim 2)
    # one entry in dim 3: coils, single-coil slices and single-coil partitions all fit; the data cannot say
    assert main(["convert", str(tmp_path / "k"), str(tmp_path / "k.h5")]) == 2
    err = capsys.readouterr().err
    assert "rerun with --dim2 coils, --dim2 slices or --dim2 kspace" in err and err.count("\n") == 1
    assert not (tmp_path / "k.h5").exists()
    assert main(["convert", str(tmp_path / "k"), str(tmp_path / "k.h5"), "--dim2", "coils"]) == 0
    assert "--dim2 coils: dim 2 taken as the coils (as `bart transpose 2 3`)" in capsys.readouterr().out
    np.testing.assert_array_equal(read_kspace(tmp_path / "k.h5")[0], k)
    assert read_volume_info(tmp_path / "k.h5").attrs["bart_layout"] == "coils-in-dim2"


def test_slices_in_dim2_are_taken_as_slices(tmp_path, capsys):
    k = _slices_2d(s=10, c=2)  # ten image-space slices, stored in dim 2
    write_cfl(tmp_path / "k", np.transpose(k, (2, 3, 0, 1)))  # [X, Y, S, C]
    p = bart_to_fastmri(tmp_path / "k", tmp_path / "k.h5", log=print)
    assert "dim 2 judged image space from the data" in capsys.readouterr().out
    np.testing.assert_array_equal(read_kspace(p), k)
    assert read_volume_info(p).attrs["bart_layout"] == "slices-in-dim2"


@pytest.mark.parametrize("hybrid", [False, True])
def test_fully_sampled_3d_kspace_becomes_kx_ky_slices(tmp_path, hybrid):
    img = _coil_images((16, 20, 18), coils=3)  # [x, y, z, C]
    stored = _fft(img, (1, 2)) if hybrid else _fft(img, (0, 1, 2))  # hybrid: readout already in image space
    write_cfl(tmp_path / "k", stored)
    p = bart_to_fastmri(tmp_path / "k", tmp_path / "k.h5")
    out = read_kspace(p)  # [z, C, kx, ky]
    ref = np.transpose(_fft(img, (0, 1)), (2, 3, 0, 1))  # each partition: 2-D k-space of its image slice
    assert out.shape == ref.shape == (18, 3, 16, 20)
    np.testing.assert_allclose(out, ref, atol=1e-5 * np.abs(ref).max())
    assert read_volume_info(p).attrs["bart_layout"] == ("3d-partitions-hybrid" if hybrid else "3d-partitions")


@pytest.mark.parametrize("hybrid", [False, True])
def test_ky_kz_undersampled_3d_kspace_becomes_ky_kz_slices(tmp_path, hybrid):
    img = _coil_images((16, 20, 18), coils=3)  # [x, y, z, C]
    pattern = _poisson_like(20, 18, (6, 6), accel=3)[None, :, :, None]  # [ky, kz], the same for every kx
    stored = (_fft(img, (1, 2)) if hybrid else _fft(img, (0, 1, 2))) * pattern
    write_cfl(tmp_path / "k", stored)
    p = bart_to_fastmri(tmp_path / "k", tmp_path / "k.h5", undersampled=True)
    out = read_kspace(p)  # [x, C, ky, kz]: an inverse FFT along kz would alias, the readout's is exact
    ref = np.transpose(_fft(img, (1, 2)) * pattern, (0, 3, 1, 2))
    assert out.shape == (16, 3, 20, 18)
    np.testing.assert_allclose(out, ref, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_array_equal(read_mask(p), pattern[0, :, :, 0].astype(np.float32))
    assert read_volume_info(p).attrs["bart_layout"] == ("3d-hybrid" if hybrid else "3d-kspace")


def test_fourier_axis_detection():
    img = _coil_images((32, 24, 16), coils=8)
    k = _fft(img, (0, 1, 2))
    assert [classify_axis(k, d) for d in range(3)] == ["kspace"] * 3
    assert [classify_axis(img, d) for d in range(3)] == ["image"] * 3
    assert classify_axis(k, 3) != "kspace"  # coils
    flat = np.exp(2j * np.pi * np.random.default_rng(0).random((8, 8, 4)))  # equal energy, unrelated phases
    assert classify_axis(flat, 2) is None  # neither: refused, the user says which


def _poisson_like(h, w, calib, accel, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.random((h, w)) < 1.0 / accel
    ch, cw = calib
    m[h // 2 - ch // 2: h // 2 - ch // 2 + ch, w // 2 - cw // 2: w // 2 - cw // 2 + cw] = True
    return m


def test_undersampled_2d_pattern_is_stored_with_its_attrs(tmp_path):
    k = _slices_2d(s=2, c=3, h=40, w=36)
    pattern = _poisson_like(40, 36, (10, 8), accel=6)
    write_cfl(tmp_path / "u", np.transpose(k * pattern, (2, 3, 1, 0)).reshape(40, 36, 1, 3, *(1,) * 9, 2))
    assert main(["convert", str(tmp_path / "u"), str(tmp_path / "u.h5"), "--undersampled"]) == 0
    mask = read_mask(tmp_path / "u.h5")
    np.testing.assert_array_equal(mask, pattern.astype(np.float32))  # the true 2-D pattern, never all ones
    attrs = read_volume_info(tmp_path / "u.h5").attrs
    assert attrs["acceleration"] == pytest.approx(pattern.size / pattern.sum())
    assert attrs["num_low_frequency"] >= 8 and attrs["calibration_box"][0] >= 10
    ds = SliceDataset(tmp_path / "u.h5")
    s = ds[1]
    assert s["mask"].shape == (40, 36) and s["target"] is None
    np.testing.assert_array_equal(s["kspace"] * s["mask"], s["kspace"])  # masked k-space and mask agree


def test_undersampled_per_slice_patterns_and_1d(tmp_path):
    k = _slices_2d(s=2, c=2, h=32, w=28)
    pats = np.stack([_poisson_like(32, 28, (8, 8), 4, seed=s) for s in range(2)])
    write_cfl(tmp_path / "u", np.transpose(k * pats[:, None], (2, 3, 1, 0)).reshape(32, 28, 1, 2, *(1,) * 9, 2))
    p = bart_to_fastmri(tmp_path / "u", tmp_path / "u.h5", undersampled=True)
    np.testing.assert_array_equal(read_mask(p), pats.astype(np.float32))
    np.testing.assert_array_equal(SliceDataset(p)[1]["mask"], pats[1].astype(np.float32))
    cols = np.zeros(28, bool)
    cols[::3] = True
    cols[12:17] = True
    write_cfl(tmp_path / "c", np.transpose(k[:1] * cols, (2, 3, 1, 0))[:, :, None, :, 0])  # [X, Y, 1, C]
    p = bart_to_fastmri(tmp_path / "c", tmp_path / "c.h5", undersampled=True)
    m = read_mask(p)
    assert m.shape == (28,)  # a 1-D pattern is stored 1-D
    attrs = read_volume_info(p).attrs
    assert attrs["num_low_frequency"] == 5 and attrs["acceleration"] == pytest.approx(28 / cols.sum())


def test_undersampled_refuses_too_sparse_and_empty(tmp_path):
    k = _slices_2d(s=1, c=2, h=40, w=40)
    sparse = np.zeros((40, 40), bool)
    sparse[18:22, 18:22] = True  # 1 % of k-space
    write_cfl(tmp_path / "s", np.transpose(k * sparse, (2, 3, 1, 0))[:, :, None, :, 0])  # [X, Y, 1, C]
    with pytest.raises(MrlearnError, match=r"s \(sampling pattern found in the data\): 'mask' samples 1 % of k-space"):
        bart_to_fastmri(tmp_path / "s", tmp_path / "s.h5", undersampled=True)
    write_cfl(tmp_path / "z", np.zeros((40, 40, 1, 2), np.complex64))
    with pytest.raises(MrlearnError, match="z: k-space is all zero"):
        bart_to_fastmri(tmp_path / "z", tmp_path / "z.h5", undersampled=True)
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "z.h5").exists()


def test_calibration_box_shapes():
    for box in [(16, 16), (20, 20), (24, 5), (6, 30)]:
        m = np.zeros((64, 48), bool)
        m[32 - box[0] // 2: 32 - box[0] // 2 + box[0], 24 - box[1] // 2: 24 - box[1] // 2 + box[1]] = True
        assert calibration_box(m) == box
    assert calibration_box(np.zeros((8, 8), bool)) == (0, 0)
    d = describe_pattern(np.ones(10, bool))
    assert d == {"acceleration": 1.0, "num_low_frequency": 10}


def test_maps_follow_the_kspace_layout(tmp_path):
    k = _slices_2d(s=1, h=30, w=22)[0]
    maps = make_kspace(1, 4, 30, 22, seed=9)[0]
    write_cfl(tmp_path / "k", np.transpose(k, (1, 2, 0))[None])  # [1, ky, kz, C]
    write_cfl(tmp_path / "m", np.transpose(maps, (1, 2, 0))[None])
    p = bart_to_fastmri(tmp_path / "k", tmp_path / "k.h5", maps_path=tmp_path / "m")
    np.testing.assert_array_equal(read_sens_maps(p)[0], maps)


def test_undersampled_data_converted_as_full_gets_a_note(tmp_path, capsys):
    k = _slices_2d(s=1, c=2, h=32, w=32)
    write_cfl(tmp_path / "u", np.transpose(k * _poisson_like(32, 32, (8, 8), 4), (2, 3, 1, 0))[:, :, None, :, 0])  # [X, Y, 1, C]
    assert main(["convert", str(tmp_path / "u"), str(tmp_path / "u.h5")]) == 0
    assert "pass --undersampled" in capsys.readouterr().out
