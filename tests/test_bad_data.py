"""Bad input data: each case is one line naming the file (never a traceback, never a silent wrong result)."""

import errno
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from helpers_data import make_kspace, write_test_volume
from mrlearn.cli import main
from mrlearn.data import checks
from mrlearn.data.dataset import SliceDataset
from mrlearn.data.fastmri import make_ismrmrd_header, read_kspace, read_volume_info, write_volume
from mrlearn.errors import MrlearnError


def _kspace_file(path, k, **kw):
    return write_volume(path, k.astype(np.complex64), acquisition="PD", **kw)


def _scaled(factor):
    return lambda p: _kspace_file(p, make_kspace(2, 2, 16, 12, seed=1) * np.float32(1.0) * factor)


def _with_value(value):
    def make(p):
        k = make_kspace(2, 2, 16, 12, seed=1)
        k[1, 0, 3, 4] = value
        return _kspace_file(p, k)
    return make


def _masked(mask_fn):
    def make(p):
        k = make_kspace(2, 2, 32, 32, seed=2)
        m = mask_fn()
        return _kspace_file(p, k * m, mask=m, attrs={"acceleration": 4})
    return make


def _max_attr(p):
    write_test_volume(p)
    with h5py.File(p, "a") as f:
        f.attrs["max"] = "not a number"
    return p


def _sparse_2d():
    m = np.zeros((32, 32), bool)
    m[15:17, 15:17] = True  # 0.4 % of k-space
    return m


def _misfit_mask():  # samples only columns where the data are zero: nothing was acquired there
    m = np.zeros(32, bool)
    m[:8] = True
    return m


def _no_data_at_mask(p):
    k = make_kspace(1, 2, 32, 32, seed=3)
    k[..., :8] = 0
    return _kspace_file(p, k, mask=_misfit_mask())


CASES = {
    # name: (make file, words the one-line error must hold)
    "matrix 1x1": (lambda p: _kspace_file(p, np.ones((1, 2, 1, 1))), "k-space matrix 1 x 1 is too small to reconstruct"),
    "matrix 3x3": (lambda p: _kspace_file(p, np.ones((1, 2, 3, 3))), "k-space matrix 3 x 3 is too small to reconstruct"),
    "recon 5000x5000 in header": (lambda p: _kspace_file(p, make_kspace(1, 2, 16, 12), header=make_ismrmrd_header((16, 12), (5000, 5000))),
                                  "recon size (ismrmrd_header reconSpace or target) 5000 x 5000 does not fit the k-space matrix 16 x 12"),
    "non-numeric max": (_max_attr, "attribute 'max' is not a number"),
    "NaN": (_with_value(np.nan), "k-space of slice 1 contains NaN or Inf"),
    "Inf": (_with_value(np.inf), "k-space of slice 1 contains NaN or Inf"),
    "scaled 1e30": (_scaled(1e30), "too large for float32"),
    "all-zero k-space": (lambda p: _kspace_file(p, np.zeros((2, 2, 16, 12))), "k-space of slice 0 is all zero"),
    "mask of zeros": (_masked(lambda: np.zeros(32)), "'mask' samples nothing (all zeros)"),
    "2-D mask of zeros": (_masked(lambda: np.zeros((32, 32))), "'mask' samples nothing (all zeros)"),
    "2-D mask below 2 %": (_masked(_sparse_2d), "'mask' samples 0.39 % of k-space, below 2 %"),
    "no data at the mask": (_no_data_at_mask, "holds no data at the sampled positions of its mask"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_file_is_one_line_naming_it(tmp_path, case):
    make, words = CASES[case]
    path = tmp_path / "bad.h5"
    make(path)
    with pytest.raises(MrlearnError) as exc:
        ds = SliceDataset(tmp_path)  # index-time checks (shapes, attrs, mask) ...
        for i in range(len(ds)):
            ds[i]  # ... and read-time checks (k-space values)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and words in msg, msg


@pytest.mark.parametrize("case", ["scaled 1e30", "all-zero k-space", "NaN"])
def test_bad_kspace_refused_by_cli(tmp_path, capsys, case):
    CASES[case][0](tmp_path / "bad.h5")
    assert main(["convert", str(tmp_path / "bad.h5"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrlearn: error:") and "\n" not in err and "bad.h5" in err


@pytest.mark.parametrize("factor", [1e-6, 1e12])
def test_large_and_small_scales_are_accepted(tmp_path, factor):
    _scaled(factor)(tmp_path / "ok.h5")
    np.testing.assert_allclose(read_kspace(tmp_path / "ok.h5"), make_kspace(2, 2, 16, 12, seed=1)[:, :] * np.float32(factor),
                               rtol=1e-6)


def test_requested_recon_size_is_checked_before_allocating(tmp_path):
    write_test_volume(tmp_path / "v.h5")
    t0 = time.perf_counter()
    with pytest.raises(MrlearnError, match=r"v.h5: requested recon size \(data.recon_size\) 5000 x 5000 does not fit"):
        SliceDataset(tmp_path, target_size=(5000, 5000))
    assert time.perf_counter() - t0 < 5.0


def test_non_utf8_file_name(tmp_path):
    bad = os.fsdecode(b"vol\xff.h5")
    write_test_volume(tmp_path / bad)
    with pytest.raises(MrlearnError) as exc:
        SliceDataset(tmp_path)
    msg = str(exc.value)
    assert "vol\\xff.h5: file name is not valid UTF-8" in msg
    msg.encode("utf-8")  # printable
    with pytest.raises(MrlearnError, match="not valid UTF-8"):
        read_volume_info(tmp_path / bad)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_chmod_000(tmp_path):
    p = write_test_volume(tmp_path / "v.h5")
    os.chmod(p, 0)
    try:
        with pytest.raises(MrlearnError, match="v.h5: file is not readable"):
            SliceDataset(tmp_path)
    finally:
        os.chmod(p, 0o644)


def test_unreadable_file_reported_as_permissions(tmp_path, monkeypatch):
    # as root chmod 000 cannot be made; the same OSError is raised by hand
    p = write_test_volume(tmp_path / "v.h5")

    def denied(*_a, **_k):
        raise PermissionError(errno.EACCES, "Permission denied", str(p))

    monkeypatch.setattr(checks, "open", denied, raising=False)
    with pytest.raises(MrlearnError, match=r"v.h5: file is not readable \(permission denied\); fix its permissions"):
        read_volume_info(p)


@pytest.mark.skipif(os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE", reason="HDF5 file locking is off")
def test_file_locked_by_a_writer(tmp_path):
    p = write_test_volume(tmp_path / "v.h5")
    code = f"import h5py, sys, time; f = h5py.File({str(p)!r}, 'a'); print('open', flush=True); time.sleep(30)"
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(MrlearnError) as exc:
            read_volume_info(p)
        msg = str(exc.value)
        assert "locked by another process" in msg and "truncated" not in msg and "v.h5" in msg
    finally:
        writer.kill()
        writer.wait()


def _full_disk_open(limit: int = 16):
    """``open`` that lets ``limit`` bytes into a ``.tmp`` file, then fails like a full disk (ENOSPC)."""
    import builtins

    real = builtins.open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            if self.fh.tell() + len(data) > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def fake(file, mode="r", *args, **kwargs):
        fh = real(file, mode, *args, **kwargs)
        return Full(fh) if "w" in mode and str(file).endswith(".tmp") else fh

    return fake


def _nifti_map(folder):
    import nibabel as nib

    from mrlearn.qmri.invivo import _write_nifti

    _write_nifti(folder / "S0.nii.gz", np.ones((4, 4, 2), np.float32), nib.Nifti1Image(np.zeros((4, 4, 2)), np.eye(4)), "S0")


def _submission(folder):
    from mrlearn.data.fastmri import write_reconstruction

    write_reconstruction(folder / "r.h5", np.ones((2, 8, 8), np.float32))


def _cfl(folder):
    from mrlearn.data.cfl import write_cfl

    write_cfl(folder / "k", np.ones((8, 8)))


WRITERS = {  # name: (write one file into a folder, the file's name)
    "fastMRI volume": (lambda folder: write_volume(folder / "v.h5", make_kspace(2, 2, 16, 12), acquisition="PD"), "v.h5"),
    "submission file": (_submission, "r.h5"),
    "BART cfl": (_cfl, "k.cfl"),
    "NIfTI map": (_nifti_map, "S0.nii.gz"),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, writer):
    import mrlearn.io

    make, name = WRITERS[writer]
    monkeypatch.setattr(mrlearn.io, "open", _full_disk_open(), raising=False)
    target = tmp_path / "out"
    with pytest.raises(MrlearnError) as exc:
        make(target)
    assert f"{name}: no space left on the device" in str(exc.value) and "\n" not in str(exc.value)
    assert not [p for p in target.rglob("*") if p.is_file()]
