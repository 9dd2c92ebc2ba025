"""fastMRI HDF5 reading/writing, the ISMRMRD header, and one test per kind of bad input."""

import h5py
import numpy as np
import pytest

from helpers_data import make_kspace, rss_target, write_test_volume
from mrlearn.data.fastmri import (
    all_finite,
    make_ismrmrd_header,
    parse_ismrmrd_header,
    read_kspace,
    read_reconstruction,
    read_slice,
    read_target,
    read_volume_info,
    write_reconstruction,
    write_volume,
)
from mrlearn.errors import MrlearnError

# A header in the layout of fastMRI knee files (values as in a typical 640 x 368 CORPD file).
KNEE_HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD" xmlns:xs="http://www.w3.org/2001/XMLSchema">
 <encoding>
  <encodedSpace><matrixSize><x>640</x><y>368</y><z>1</z></matrixSize>
   <fieldOfView_mm><x>280</x><y>161</y><z>4.5</z></fieldOfView_mm></encodedSpace>
  <reconSpace><matrixSize><x>320</x><y>320</y><z>1</z></matrixSize>
   <fieldOfView_mm><x>140</x><y>140</y><z>3</z></fieldOfView_mm></reconSpace>
  <encodingLimits>
   <kspace_encoding_step_1><minimum>0</minimum><maximum>347</maximum><center>174</center></kspace_encoding_step_1>
   <kspace_encoding_step_2><minimum>0</minimum><maximum>0</maximum><center>0</center></kspace_encoding_step_2>
  </encodingLimits>
 </encoding>
</ismrmrdHeader>"""


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_parse_header_like_fastmri():
    hdr = parse_ismrmrd_header(KNEE_HEADER)
    assert hdr["encoding_size"] == (640, 368, 1)
    assert hdr["recon_size"] == (320, 320, 1)
    assert hdr["enc_limits_center"] == 174 and hdr["enc_limits_max"] == 347
    assert hdr["recon_fov_mm"] == (140.0, 140.0, 3.0)


def test_knee_header_padding_closed_form(tmp_path):
    # fastMRI: left = 368 // 2 - 174 = 10, right = 10 + 347 + 1 = 358
    k = np.zeros((1, 2, 640, 368), np.complex64)
    k[0, :, 320, 184] = 1
    p = write_volume(tmp_path / "knee.h5", k, acquisition="CORPD_FBK", header=KNEE_HEADER)
    info = read_volume_info(p)
    assert info.padding == (10, 358)
    assert info.recon_size == (320, 320) and info.encoding_size == (640, 368, 1)
    assert info.num_coils == 2 and not info.single_coil and info.target_key is None


def test_make_header_round_trip():
    xml = make_ismrmrd_header((230, 180), (230, 180), enc_center=88, enc_max=175)
    hdr = parse_ismrmrd_header(xml)
    assert hdr["encoding_size"][:2] == (230, 180) and hdr["recon_size"][:2] == (230, 180)
    assert (hdr["enc_limits_center"], hdr["enc_limits_max"]) == (88, 175)
    default = parse_ismrmrd_header(make_ismrmrd_header((16, 12), (8, 8)))
    assert (default["enc_limits_center"], default["enc_limits_max"]) == (6, 11)  # all columns acquired


@pytest.mark.parametrize("coils", [3, None])
def test_write_read_round_trip(tmp_path, coils):
    p = write_test_volume(tmp_path / "v.h5", slices=3, coils=coils, seed=4, acquisition="AXT2")
    k = make_kspace(3, coils, 16, 12, 4)
    info = read_volume_info(p)
    assert info.num_slices == 3 and info.single_coil == (coils is None)
    assert info.kspace_shape == k.shape and info.acquisition == "AXT2" and info.patient_id == "p4"
    assert info.target_key == ("reconstruction_rss" if coils else "reconstruction_esc")
    assert info.recon_size == (8, 12) and info.padding == (1, 11)
    s = read_slice(p, 1)
    assert s["kspace"].dtype == np.complex64 and s["kspace"].shape == ((coils or 1), 16, 12)
    np.testing.assert_array_equal(s["kspace"], k[1] if coils else k[1][None])
    tgt = read_target(p)
    np.testing.assert_allclose(s["target"], tgt[1])
    ref = rss_target(k)[:, 4:12, :]  # centre crop 16 -> 8 rows
    np.testing.assert_allclose(tgt, ref, rtol=1e-4, atol=1e-5 * ref.max())
    assert s["max"] == pytest.approx(float(tgt.max()))
    assert info.attrs["norm"] == pytest.approx(float(np.linalg.norm(tgt.astype(np.float64))), rel=1e-6)
    assert s["mask"] is None and s["slice"] == 1 and s["fname"] == "v.h5" and s["single_coil"] == (coils is None)
    assert read_kspace(p).shape == (3, coils or 1, 16, 12)


def test_no_header_uses_target_or_full_matrix(tmp_path):
    p = write_test_volume(tmp_path / "a.h5", header=False, recon=(10, 8))
    info = read_volume_info(p)
    assert info.recon_size == (10, 8) and info.padding is None and info.encoding_size == (16, 12, 1)
    q = write_test_volume(tmp_path / "b.h5", header=False, target=False, h=23, w=18)  # odd size, no target
    info = read_volume_info(q)
    assert info.recon_size == (23, 18) and info.target_key is None and info.padding is None
    s = read_slice(q, 0)
    assert s["target"] is None and s["max"] is None and s["recon_size"] == (23, 18)


@pytest.mark.parametrize("scale", [1e-6, 1e12])
def test_extreme_kspace_scales_are_kept(tmp_path, scale):
    p = write_test_volume(tmp_path / "s.h5", scale=scale, seed=2)
    s = read_slice(p, 0)
    np.testing.assert_allclose(s["kspace"], make_kspace(2, 3, 16, 12, 2, scale)[0], rtol=1e-6)
    assert np.isfinite(s["target"]).all() and s["max"] > 0


def test_test_file_with_mask(tmp_path):
    k = make_kspace(2, 4, 16, 12, 1)
    mask = np.zeros(12, bool)
    mask[[0, 4, 5, 6, 7, 10]] = True
    p = write_volume(tmp_path / "t.h5", k * mask, acquisition="CORPDFS_FBK", mask=mask,
                     attrs={"acceleration": 4, "num_low_frequency": 4})
    info = read_volume_info(p)
    assert info.has_mask and info.target_key is None and info.attrs["acceleration"] == 4
    s = read_slice(p, 1)
    np.testing.assert_array_equal(s["mask"], mask.astype(np.float32))
    assert s["mask"].dtype == np.float32 and s["target"] is None


@pytest.mark.parametrize("per_slice", [False, True])
def test_file_with_2d_mask(tmp_path, per_slice):
    from mrlearn.data.dataset import SliceDataset
    from mrlearn.data.transforms import ReconTransform

    k = make_kspace(2, 3, 16, 12, seed=3)
    rng = np.random.default_rng(0)
    masks = rng.random((2, 16, 12)) < 0.4
    masks[:, 6:10, 4:8] = True  # calibration box
    if not per_slice:
        masks[1] = masks[0]
    stored = masks if per_slice else masks[0]
    p = write_volume(tmp_path / "t.h5", k * masks[:, None], acquisition="PD", mask=stored, attrs={"acceleration": 2.5})
    info = read_volume_info(p)
    assert info.mask_shape == ((2, 16, 12) if per_slice else (16, 12))
    ds = SliceDataset(p)
    for i in range(2):
        s = ds[i]
        assert s["mask"].shape == (16, 12) and s["mask"].dtype == np.float32
        np.testing.assert_array_equal(s["mask"], masks[i].astype(np.float32))
        np.testing.assert_array_equal(s["kspace"] * s["mask"], s["kspace"])  # masked k-space and mask agree
        out = ReconTransform(None, keep_kspace=True)(s, i, 0)
        np.testing.assert_array_equal(np.asarray(out["mask"]).reshape(16, 12), masks[i].astype(np.float32))


def test_submission_round_trip(tmp_path):
    recon = np.random.default_rng(0).random((3, 8, 6)).astype(np.float32)
    p = write_reconstruction(tmp_path / "sub" / "r.h5", recon)
    np.testing.assert_array_equal(read_reconstruction(p), recon)
    assert not (tmp_path / "sub" / "r.h5.tmp").exists()
    with pytest.raises(MrlearnError) as exc:
        read_target(p)
    _one_line(exc, "r.h5", "no target")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    p = tmp_path / "x.h5"
    with pytest.raises(MrlearnError):
        write_volume(p, np.ones((2, 3, 16, 12), np.complex64), target=np.ones((1, 8, 8)), acquisition="A")
    assert not p.exists() and not (tmp_path / "x.h5.tmp").exists()


# ------------------------------------------------------------------------------------------------- bad input
def test_missing_path(tmp_path):
    with pytest.raises(MrlearnError) as exc:
        read_volume_info(tmp_path / "nope.h5")
    _one_line(exc, "nope.h5", "not found")


def test_not_hdf5(tmp_path):
    p = tmp_path / "text.h5"
    p.write_text("hello\n")
    with pytest.raises(MrlearnError) as exc:
        read_slice(p, 0)
    _one_line(exc, "text.h5", "not an HDF5")


def test_truncated_hdf5(tmp_path):
    p = write_test_volume(tmp_path / "full.h5", slices=3, coils=4)
    data = p.read_bytes()
    q = tmp_path / "cut.h5"
    q.write_bytes(data[: len(data) // 2])
    with pytest.raises(MrlearnError) as exc:
        read_slice(q, 2)
    _one_line(exc, "cut.h5", "truncated or corrupt")


def test_no_kspace(tmp_path):
    p = tmp_path / "nok.h5"
    with h5py.File(p, "w") as f:
        f["reconstruction_rss"] = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(MrlearnError) as exc:
        read_volume_info(p)
    _one_line(exc, "nok.h5", "no 'kspace'")


def test_wrong_rank(tmp_path):
    p = tmp_path / "rank.h5"
    with h5py.File(p, "w") as f:
        f["kspace"] = np.zeros((16, 12), np.complex64)
    with pytest.raises(MrlearnError) as exc:
        read_volume_info(p)
    _one_line(exc, "rank.h5", "rank 2")


def test_non_complex(tmp_path):
    p = tmp_path / "real.h5"
    with h5py.File(p, "w") as f:
        f["kspace"] = np.zeros((1, 2, 16, 12), np.float32)
    with pytest.raises(MrlearnError) as exc:
        read_slice(p, 0)
    _one_line(exc, "real.h5", "not complex")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_in_kspace(tmp_path, bad):
    k = make_kspace(2, 2)
    k[1, 0, 3, 3] = bad
    p = write_volume(tmp_path / "nan.h5", k, acquisition="A")
    read_slice(p, 0)  # the clean slice reads
    with pytest.raises(MrlearnError) as exc:
        read_slice(p, 1)
    _one_line(exc, "nan.h5", "NaN or Inf", "slice 1")


def test_mask_does_not_fit(tmp_path):
    p = write_volume(tmp_path / "m.h5", make_kspace(1, 2), acquisition="A")
    with h5py.File(p, "a") as f:
        f["mask"] = np.ones(10, bool)
    with pytest.raises(MrlearnError) as exc:
        read_volume_info(p)
    _one_line(exc, "m.h5", "mask", "width is 12")


def test_slice_out_of_range_and_bad_header(tmp_path):
    p = write_test_volume(tmp_path / "r.h5", slices=2)
    with pytest.raises(MrlearnError) as exc:
        read_slice(p, 5)
    _one_line(exc, "r.h5", "out of range")
    q = write_volume(tmp_path / "h.h5", make_kspace(1, 2), acquisition="A", header="<ismrmrdHeader><encoding>")
    with pytest.raises(MrlearnError) as exc:
        read_volume_info(q)
    _one_line(exc, "h.h5", "not valid XML")


def test_all_finite_fast_path_and_overflow():
    x = np.full((2, 8, 6), 3e38 + 3e38j, np.complex64)  # finite, but its float32 sum overflows
    assert all_finite(x)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 2, 3] = bad
        assert not all_finite(y)
    assert all_finite(np.ones((3, 4), np.complex128)) and not all_finite(np.array([1j * np.nan]))
