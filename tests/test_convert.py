"""BART <-> fastMRI conversion: axis mapping, round trips, `bart` as the reference, the CLI and its errors."""

import shutil
import subprocess

import numpy as np
import pytest

from helpers_data import make_kspace, rss_target, write_test_volume
from mrlearn.cli import main
from mrlearn.data.cfl import read_cfl, write_cfl
from mrlearn.data.convert import bart_to_fastmri, convert_path, fastmri_to_bart
from mrlearn.data.fastmri import read_kspace, read_sens_maps, read_slice, read_target, read_volume_info, write_volume
from mrlearn.errors import MrlearnError

needs_bart = pytest.mark.skipif(shutil.which("bart") is None, reason="BART not installed")


def _bart(*args):
    subprocess.run(["bart", *map(str, args)], check=True, capture_output=True)


def _crandn(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def test_axis_mapping_with_slice_dim(tmp_path):
    # BART [X=10, Y=9, 1, C=3, 1 x 9, S=2]: slices at dim 13
    b = _crandn((10, 9, 1, 3) + (1,) * 9 + (2,))
    write_cfl(tmp_path / "k", b)
    p = bart_to_fastmri(tmp_path / "k", tmp_path / "k.h5", acquisition="AXT1")
    k = read_kspace(p)
    assert k.shape == (2, 3, 10, 9)
    for s in range(2):
        for c in range(3):
            np.testing.assert_array_equal(k[s, c], b[:, :, 0, c, 0, 0, 0, 0, 0, 0, 0, 0, 0, s])
    info = read_volume_info(p)
    assert info.acquisition == "AXT1" and info.recon_size == (10, 9) and info.padding is None
    ref = rss_target(k)
    np.testing.assert_allclose(read_target(p), ref, rtol=1e-4, atol=1e-5 * ref.max())


def test_round_trip_fastmri_bart_fastmri_with_maps(tmp_path):
    k = make_kspace(3, 4, 16, 12, seed=5)
    maps = _crandn((3, 4, 16, 12), seed=6)
    src = write_volume(tmp_path / "v.h5", k, acquisition="CORPD_FBK", sens_maps=maps)
    written = fastmri_to_bart(src, tmp_path / "bart" / "v")
    assert [w.name for w in written] == ["v", "v_maps"]
    assert read_cfl(tmp_path / "bart" / "v").shape == (16, 12, 1, 4) + (1,) * 9 + (3,)
    back = bart_to_fastmri(tmp_path / "bart" / "v", tmp_path / "back.h5", maps_path=tmp_path / "bart" / "v_maps")
    np.testing.assert_array_equal(read_kspace(back), k)
    np.testing.assert_array_equal(read_sens_maps(back), maps)


def test_single_slice_and_single_coil(tmp_path):
    k = make_kspace(1, None, 16, 12, seed=1)  # [1, H, W] single-coil
    src = write_volume(tmp_path / "sc.h5", k, acquisition="CORPD_FBK")
    fastmri_to_bart(src, tmp_path / "sc")
    assert read_cfl(tmp_path / "sc").shape == (16, 12)  # [X, Y] (trailing singleton dims dropped)
    back = bart_to_fastmri(tmp_path / "sc", tmp_path / "sc2.h5")
    info = read_volume_info(back)
    assert info.single_coil and info.kspace_shape == (1, 16, 12) and info.target_key == "reconstruction_esc"
    ref = rss_target(k)[0]
    np.testing.assert_allclose(read_target(back)[0], ref, rtol=1e-4, atol=1e-5 * ref.max())


def test_undersampled_stores_mask_and_no_target(tmp_path):
    k = make_kspace(1, 2, 16, 12)
    cols = np.zeros(12, bool)
    cols[[1, 5, 6, 7, 9]] = True
    write_cfl(tmp_path / "u", np.transpose(k * cols, (2, 3, 1, 0))[:, :, None, :, 0])
    p = convert_path(tmp_path / "u", tmp_path / "u.h5", undersampled=True)[0]
    s = read_slice(p, 0)
    np.testing.assert_array_equal(s["mask"], cols.astype(np.float32))
    assert s["target"] is None
    info = read_volume_info(p)
    assert info.attrs["acceleration"] == pytest.approx(12 / 5) and info.attrs["num_low_frequency"] == 3


@needs_bart
def test_against_bart_phantom_rss(tmp_path):
    _bart("phantom", "-k", "-s", 4, "-x", 32, tmp_path / "k")
    p = bart_to_fastmri(tmp_path / "k", tmp_path / "k.h5")
    target = read_target(p)[0]
    # BART unitary centered inverse FFT + RSS over coils (dim 3 -> bitmask 8) == our target
    _bart("fft", "-u", "-i", 3, tmp_path / "k", tmp_path / "img")
    _bart("rss", 8, tmp_path / "img", tmp_path / "r")
    ref = np.abs(read_cfl(tmp_path / "r"))
    np.testing.assert_allclose(target, ref, rtol=1e-4, atol=1e-5 * ref.max())
    # plain `bart fft -i` is not normalised: a factor sqrt(H W) larger
    _bart("fft", "-i", 3, tmp_path / "k", tmp_path / "img2")
    _bart("rss", 8, tmp_path / "img2", tmp_path / "r2")
    np.testing.assert_allclose(target * 32, np.abs(read_cfl(tmp_path / "r2")), rtol=1e-4, atol=1e-5 * ref.max() * 32)


@needs_bart
def test_bart_ecalib_maps_are_stored(tmp_path):
    _bart("phantom", "-k", "-s", 4, "-x", 24, tmp_path / "k")
    _bart("ecalib", "-m", 1, "-r", 12, tmp_path / "k", tmp_path / "maps")
    assert main(["convert", str(tmp_path / "k"), str(tmp_path / "out.h5"), "--maps", str(tmp_path / "maps"),
                 "--acquisition", "PHANTOM"]) == 0
    maps = read_sens_maps(tmp_path / "out.h5")
    ref = read_cfl(tmp_path / "maps")  # [24, 24, 1, 4]
    assert maps.shape == (1, 4, 24, 24)
    np.testing.assert_array_equal(maps[0], np.transpose(ref[:, :, 0, :], (2, 0, 1)))
    assert read_volume_info(tmp_path / "out.h5").acquisition == "PHANTOM"


def test_cli_folder_round_trip_pairs_maps(tmp_path, capsys):
    src = tmp_path / "h5"
    maps = _crandn((2, 2, 16, 12), seed=3)
    write_volume(src / "vol0.h5", make_kspace(2, 2, seed=0), acquisition="AXT2", sens_maps=maps)
    write_test_volume(src / "vol1.h5", slices=1, coils=2, seed=1, header=False)
    assert main(["convert", str(src), str(tmp_path / "bart")]) == 0
    assert sorted(p.name for p in (tmp_path / "bart").iterdir()) == [
        "vol0.cfl", "vol0.hdr", "vol0_maps.cfl", "vol0_maps.hdr", "vol1.cfl", "vol1.hdr"]
    assert main(["convert", str(tmp_path / "bart"), str(tmp_path / "again"), "--acquisition", "CORPD_FBK"]) == 0
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["vol0.h5", "vol1.h5"]  # NAME_maps is not a volume
    for i in range(2):
        np.testing.assert_array_equal(read_kspace(tmp_path / "again" / f"vol{i}.h5"), read_kspace(src / f"vol{i}.h5"))
    np.testing.assert_array_equal(read_sens_maps(tmp_path / "again" / "vol0.h5"), maps)
    assert read_sens_maps(tmp_path / "again" / "vol1.h5") is None
    out = capsys.readouterr().out
    assert "wrote 3 file(s)" in out and out.rstrip().endswith("wrote 2 file(s)")


def test_first_espirit_map_set_is_kept(tmp_path):
    write_cfl(tmp_path / "k", _crandn((10, 8, 1, 2)))
    m = _crandn((10, 8, 1, 2, 2), seed=2)  # two ESPIRiT map sets in BART dim 4
    write_cfl(tmp_path / "m", m)
    p = bart_to_fastmri(tmp_path / "k", tmp_path / "o.h5", maps_path=tmp_path / "m")
    np.testing.assert_array_equal(read_sens_maps(p)[0], np.transpose(m[:, :, 0, :, 0], (2, 0, 1)))


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrlearn: error:") and "empty" in err and "\n" not in err
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err


def test_bad_bart_inputs(tmp_path):
    write_cfl(tmp_path / "slab", _crandn((10, 8, 4, 2) + (1,) * 9 + (3,)))  # dim 2 and slices both used
    with pytest.raises(MrlearnError, match=r"dim 2 and 3 slices in dim 13; convert one slab at a time: `bart slice 13 0 "):
        bart_to_fastmri(tmp_path / "slab", tmp_path / "o.h5")
    write_cfl(tmp_path / "te", _crandn((10, 8, 1, 2, 1, 3)))  # echoes in dim 5
    with pytest.raises(MrlearnError, match=r"k-space has data in BART dims \[5\] \(sizes \[3\]\), which mrlearn does not convert; keep one entry of each: `bart slice 5 0 "):
        bart_to_fastmri(tmp_path / "te", tmp_path / "o.h5")
    write_cfl(tmp_path / "k", _crandn((10, 8, 1, 2)))
    write_cfl(tmp_path / "m", _crandn((10, 8, 1, 3)))
    with pytest.raises(MrlearnError, match="maps have shape"):
        bart_to_fastmri(tmp_path / "k", tmp_path / "o.h5", maps_path=tmp_path / "m")
    bad = _crandn((10, 8, 1, 2))
    bad[0, 0, 0, 1] = np.nan
    write_cfl(tmp_path / "nan", bad)
    with pytest.raises(MrlearnError, match="NaN"):
        bart_to_fastmri(tmp_path / "nan", tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()
