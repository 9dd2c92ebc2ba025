"""`mrlearn convert` of BART 3-D k-space with any number of partitions, coils in dim 4, what dim 2 holds (from the
data or --dim2), and the advice it prints: every `bart ...` command in a message is run with real BART (skipped
without it) and its output converted; every "as `bart ...`" equivalence in a note is checked the same way."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import numpy as np
import pytest

from mrlearn.cli import main
from mrlearn.data.bart_axes import classify_axis
from mrlearn.data.cfl import read_cfl, write_cfl
from mrlearn.data.convert import bart_to_fastmri
from mrlearn.data.fastmri import read_kspace, read_mask, read_sens_maps, read_volume_info
from mrlearn.errors import MrlearnError

needs_bart = pytest.mark.skipif(shutil.which("bart") is None, reason="BART not installed")


def _bart(*args) -> None:
    subprocess.run(["bart", *map(str, args)], check=True, capture_output=True)


def _fft(x, axes, inverse=False):
    f = np.fft.ifftn if inverse else np.fft.fftn
    return np.fft.fftshift(f(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)


def _images(x, y, z, coils, z_extent, seed=0):
    """Complex coil images ``[x, y, z, coils]`` of a smooth blob; ``z_extent``: the half-width of the z grid in
    units of the blob (small: a thin slab the object fills; 1: the whole object)."""
    rng = np.random.default_rng(seed)
    gx, gy, gz = np.meshgrid(np.linspace(-1, 1, x), np.linspace(-1, 1, y), np.linspace(-z_extent, z_extent, z),
                             indexing="ij")
    obj = np.exp(-(gx ** 2 + gy ** 2 + gz ** 2) / 0.3) * np.exp(1j * 0.4 * gx)
    maps = [np.exp(-((gx - np.cos(a)) ** 2 + (gy - np.sin(a)) ** 2 + gz ** 2) / 2) * np.exp(1j * a)
            for a in rng.uniform(0, 2 * np.pi, coils)]
    return np.stack([obj * m for m in maps], axis=-1).astype(np.complex64)


def _advice(message: str) -> list[list[str]]:
    """The `bart ...` commands quoted in a message, as argument lists."""
    return [shlex.split(cmd) for cmd in re.findall(r"`(bart [^`]*)`", message)]


def _refusal(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mrlearn: error:") and err.count("\n") == 1
    return err


def _close(a, b):
    np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("n", [2, 3, 4, 6, 9])
def test_thin_slab_partitions_and_slices_are_told_apart(tmp_path, capsys, n):
    img = _images(24, 20, n, coils=4, z_extent=0.2)  # a thin slab: the object fills it along z
    ref = np.transpose(_fft(img, (0, 1)), (2, 3, 0, 1))  # every slice's 2-D k-space [z, C, kx, ky]
    write_cfl(tmp_path / "k", _fft(img, (0, 1, 2)))  # 3-D k-space, n partitions
    write_cfl(tmp_path / "s", _fft(img, (0, 1)))  # the same as n image-space slices in dim 2
    assert main(["convert", str(tmp_path / "k"), str(tmp_path / "k.h5")]) == 0
    assert "dim 2 judged k-space from the data" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "s"), str(tmp_path / "s.h5")]) == 0
    assert "dim 2 judged image space from the data" in capsys.readouterr().out
    for name, layout in (("k", "3d-partitions"), ("s", "slices-in-dim2")):
        _close(read_kspace(tmp_path / f"{name}.h5"), ref)
        assert read_volume_info(tmp_path / f"{name}.h5").attrs["bart_layout"] == layout


@needs_bart
@pytest.mark.parametrize("n", [3, 4])
def test_bart_phantom_slab_matches_bart_fft(tmp_path, n):
    """A thin slab of BART's 3-D phantom, Fourier-transformed by BART: slices equal `bart fft -u 3` of the slab
    (odd and even partition counts: the centring agrees with BART's)."""
    _bart("phantom", "-3", "-x", 32, "-s", 4, tmp_path / "vol")
    _bart("resize", "-c", 2, n, tmp_path / "vol", tmp_path / "slab")
    _bart("fft", "-u", 7, tmp_path / "slab", tmp_path / "k")
    _bart("fft", "-u", 3, tmp_path / "slab", tmp_path / "ref")
    p = bart_to_fastmri(tmp_path / "k", tmp_path / "k.h5")
    assert read_volume_info(p).attrs["bart_layout"] == "3d-partitions"
    _close(read_kspace(p), np.transpose(read_cfl(tmp_path / "ref"), (2, 3, 0, 1)))


def test_ambiguous_dim2_is_refused_and_the_flag_decides(tmp_path, capsys):
    # two partitions of an object that fills the field of view along z: two similar values either way
    k = _fft(_images(24, 20, 32, coils=3, z_extent=1.0), (0, 1, 2))[:, :, 15:17]
    assert classify_axis(k, 2) is None
    write_cfl(tmp_path / "k", k)
    err = _refusal(["convert", str(tmp_path / "k"), str(tmp_path / "k.h5")], capsys)
    assert "the data do not say whether dim 2 (2 entries)" in err and "rerun with --dim2 kspace or --dim2 slices" in err
    assert main(["convert", str(tmp_path / "k"), str(tmp_path / "k.h5"), "--dim2", "kspace"]) == 0
    assert "--dim2 kspace: inverse-FFT'd along dim 2" in capsys.readouterr().out
    _close(read_kspace(tmp_path / "k.h5"), np.transpose(_fft(k, (2,), inverse=True), (2, 3, 0, 1)))
    assert main(["convert", str(tmp_path / "k"), str(tmp_path / "s.h5"), "--dim2", "slices"]) == 0
    np.testing.assert_array_equal(read_kspace(tmp_path / "s.h5"), np.transpose(k, (2, 3, 0, 1)))


def test_single_coil_dim2_needs_the_flag(tmp_path, capsys):
    img = _images(24, 20, 3, coils=1, z_extent=0.2)[..., 0]  # [x, y, z]
    stored = _fft(img, (0, 1))  # three single-coil slices in dim 2: BART dims [24, 20, 3]
    write_cfl(tmp_path / "k", stored)
    err = _refusal(["convert", str(tmp_path / "k"), str(tmp_path / "o.h5")], capsys)
    assert "may be coils, single-coil slices or single-coil k-space partitions; its energy profile looks like " \
           "image space" in err
    assert "rerun with --dim2 coils, --dim2 slices or --dim2 kspace" in err
    out = {}
    for flag in ("slices", "coils", "kspace"):
        assert main(["convert", str(tmp_path / "k"), str(tmp_path / f"{flag}.h5"), "--dim2", flag]) == 0
        out[flag] = read_kspace(tmp_path / f"{flag}.h5")
    assert read_volume_info(tmp_path / "slices.h5").kspace_shape == (3, 24, 20)  # a single-coil file, 3 slices
    np.testing.assert_array_equal(out["slices"], np.transpose(stored, (2, 0, 1))[:, None])
    assert read_volume_info(tmp_path / "coils.h5").kspace_shape == (1, 3, 24, 20)  # one slice, 3 coils
    np.testing.assert_array_equal(out["coils"], np.transpose(stored, (2, 0, 1))[None])
    _close(out["kspace"], np.transpose(_fft(stored, (2,), inverse=True), (2, 0, 1))[:, None])
    if shutil.which("bart"):  # the notes' equivalences, with real BART
        for flag, dims in (("coils", (2, 3)), ("slices", (2, 13))):
            _bart("transpose", *dims, tmp_path / "k", tmp_path / f"t{flag}")
            np.testing.assert_array_equal(read_kspace(bart_to_fastmri(tmp_path / f"t{flag}", tmp_path / "t.h5")),
                                          out[flag])


def test_partitions_undersampled_in_ky_only_and_maps(tmp_path):
    img = _images(24, 20, 4, coils=3, z_extent=0.2)
    cols = np.zeros(20, bool)
    cols[::2] = True
    cols[8:12] = True
    write_cfl(tmp_path / "k", _fft(img, (0, 1, 2)) * cols[None, :, None, None])  # every partition has the same ky
    maps = _images(24, 20, 4, coils=3, z_extent=0.2, seed=5)  # image space [x, y, z, C]: never transformed
    write_cfl(tmp_path / "m", maps)
    p = bart_to_fastmri(tmp_path / "k", tmp_path / "k.h5", maps_path=tmp_path / "m", undersampled=True)
    _close(read_kspace(p), np.transpose(_fft(img, (0, 1)) * cols[None, :, None, None], (2, 3, 0, 1)))
    np.testing.assert_array_equal(read_mask(p), cols.astype(np.float32))
    np.testing.assert_array_equal(read_sens_maps(p), np.transpose(maps, (2, 3, 0, 1)))


def test_few_partitions_undersampled_in_ky_kz_are_refused(tmp_path):
    k = _fft(_images(24, 20, 4, coils=3, z_extent=0.2), (0, 1, 2))
    pattern = np.random.default_rng(1).random((20, 4)) < 0.5
    pattern[8:12, 1:3] = True
    write_cfl(tmp_path / "k", k * pattern[None, :, :, None])
    with pytest.raises(MrlearnError, match=r"partition axis of 4 entries sampled differently per partition .* "
                                           r"reconstruct it in 3-D$") as exc:
        bart_to_fastmri(tmp_path / "k", tmp_path / "k.h5")
    assert "`" not in str(exc.value)  # no command to run: none would split it exactly


def test_flag_misuse_is_one_line(tmp_path, capsys):
    k = _fft(_images(24, 20, 1, coils=2, z_extent=0.2), (0, 1))  # [x, y, 1, C]
    write_cfl(tmp_path / "std", k)
    err = _refusal(["convert", str(tmp_path / "std"), str(tmp_path / "o.h5"), "--dim2", "slices"], capsys)
    assert "--dim2 slices given, but dim 2 holds one entry; leave --dim2 out" in err
    write_cfl(tmp_path / "mc", _fft(_images(24, 20, 4, coils=2, z_extent=0.2), (0, 1)))
    assert "--dim2 coils, but dim 3 already holds 2 coils" in _refusal(
        ["convert", str(tmp_path / "mc"), str(tmp_path / "o.h5"), "--dim2", "coils"], capsys)
    write_cfl(tmp_path / "kykz", np.transpose(k, (2, 0, 1, 3)))  # [1, ky, kz, C]
    assert "[1, ky, kz, coils] is one ky x kz slice" in _refusal(
        ["convert", str(tmp_path / "kykz"), str(tmp_path / "o.h5"), "--dim2", "coils"], capsys)
    assert main(["convert", str(tmp_path / "std"), str(tmp_path / "v.h5")]) == 0
    assert "--dim2: only used when converting BART to fastMRI" in _refusal(
        ["convert", str(tmp_path / "v.h5"), str(tmp_path / "back"), "--dim2", "kspace"], capsys)
    write_cfl(tmp_path / "zero", np.zeros((24, 20, 4, 2), np.complex64))
    assert "zero: k-space is all zero" in _refusal(["convert", str(tmp_path / "zero"), str(tmp_path / "o.h5")], capsys)
    assert not (tmp_path / "o.h5").exists()


def test_coils_in_dim4_are_converted(tmp_path, capsys):
    k = _fft(_images(24, 20, 1, coils=4, z_extent=0.2), (0, 1))  # [x, y, 1, C]
    write_cfl(tmp_path / "std", k)
    write_cfl(tmp_path / "d4", k[:, :, :, None, :])  # [x, y, 1, 1, C]: coils in MAPS
    write_cfl(tmp_path / "m", k[:, :, :, None, :] / np.abs(k).max())  # maps stored the same way
    assert main(["convert", str(tmp_path / "d4"), str(tmp_path / "d4.h5"), "--maps", str(tmp_path / "m")]) == 0
    assert "coils found in dim 4 (MAPS) with dim 3 empty: taken as the coils (as `bart transpose 3 4`)" in \
        capsys.readouterr().out
    p = bart_to_fastmri(tmp_path / "std", tmp_path / "std.h5")
    np.testing.assert_array_equal(read_kspace(tmp_path / "d4.h5"), read_kspace(p))
    np.testing.assert_array_equal(read_sens_maps(tmp_path / "d4.h5"), read_kspace(p) / np.abs(k).max())
    assert read_volume_info(tmp_path / "d4.h5").attrs["bart_layout"] == "standard+coils-in-dim4"
    if shutil.which("bart"):  # the note's equivalence, with real BART
        _bart("transpose", 3, 4, tmp_path / "d4", tmp_path / "t")
        np.testing.assert_array_equal(read_kspace(bart_to_fastmri(tmp_path / "t", tmp_path / "t.h5")), read_kspace(p))


@needs_bart
def test_every_refusal_command_works(tmp_path):
    rng = np.random.default_rng(0)
    base = _fft(_images(24, 20, 1, coils=3, z_extent=0.2), (0, 1))[:, :, 0]  # [x, y, C]
    cases = {  # name: (array, the expected [S, C, H, W] after the first advice command)
        "extra": base.reshape(24, 20, 1, 3, *(1,) * 7) * (1 + rng.random((1, 1, 1, 1, 1, 3, 1, 1, 1, 1, 2))),
        "both34": base.reshape(24, 20, 1, 3, 1) * (1 + rng.random((1, 1, 1, 1, 2))),
    }
    slab = _fft(_images(24, 20, 4, coils=3, z_extent=0.2), (0, 1, 2))
    cases["slab"] = slab.reshape(slab.shape + (1,) * 10) * np.array([1.0, 0.5])  # dims 2 and 13 both used
    for name, arr in cases.items():
        arr = arr.astype(np.complex64)
        write_cfl(tmp_path / name, arr)
        with pytest.raises(MrlearnError) as exc:
            bart_to_fastmri(tmp_path / name, tmp_path / f"{name}.h5")
        commands = _advice(str(exc.value))
        assert commands, str(exc.value)
        for i, cmd in enumerate(commands):
            subprocess.run(cmd, check=True, capture_output=True)
            got = read_kspace(bart_to_fastmri(cmd[-1], tmp_path / f"{name}_{i}.h5"))
            pad = read_cfl(cmd[-1])
            assert got.size == pad.size  # everything BART kept is converted
            if name == "extra":
                np.testing.assert_array_equal(got[0], np.transpose(arr[:, :, 0, :, 0, 0, 0, 0, 0, 0, 0], (2, 0, 1)))
            elif name == "both34" and cmd[1] == "reshape":  # coils c + C * m, BART's column-major order
                merged = arr[:, :, 0].reshape(24, 20, 6, order="F")
                np.testing.assert_array_equal(got[0], np.transpose(merged, (2, 0, 1)))
            elif name == "both34":
                np.testing.assert_array_equal(got[0], np.transpose(arr[:, :, 0, :, 0], (2, 0, 1)))
            else:
                _close(got, np.transpose(_fft(slab, (2,), inverse=True), (2, 3, 0, 1)))
        assert len(commands) == (2 if name == "both34" else 1)


@needs_bart
@pytest.mark.parametrize("hybrid", [False, True])
def test_notes_match_bart(tmp_path, hybrid):
    """3d-partitions(-hybrid) equals `bart fft` as the note says, then `bart transpose 2 13`; 3d-kspace equals
    `bart fft -u -i 1` then `bart transpose 0 13` (a [1, ky, kz, C] slice per x), 3d-hybrid the transpose alone."""
    img = _images(24, 20, 4, coils=3, z_extent=0.2)
    write_cfl(tmp_path / "k", _fft(img, (1, 2)) if hybrid else _fft(img, (0, 1, 2)))
    if hybrid:
        _bart("fft", "-u", 1, tmp_path / "k", tmp_path / "k0")
        _bart("fft", "-u", "-i", 4, tmp_path / "k0", tmp_path / "i")
    else:
        _bart("fft", "-u", "-i", 4, tmp_path / "k", tmp_path / "i")
    _bart("transpose", 2, 13, tmp_path / "i", tmp_path / "t")
    ours = read_kspace(bart_to_fastmri(tmp_path / "k", tmp_path / "k.h5"))
    _close(ours, read_kspace(bart_to_fastmri(tmp_path / "t", tmp_path / "t.h5")))
    big = _images(16, 20, 18, coils=2, z_extent=1.0)
    pattern = (np.random.default_rng(2).random((20, 18)) < 0.4) | (np.abs(np.arange(18) - 9) < 3)[None]
    write_cfl(tmp_path / "u", _fft(big, (1, 2) if hybrid else (0, 1, 2)) * pattern[None, :, :, None])
    if hybrid:  # the readout is already image space: only the transpose
        _bart("transpose", 0, 13, tmp_path / "u", tmp_path / "u2")
    else:
        _bart("fft", "-u", "-i", 1, tmp_path / "u", tmp_path / "u1")
        _bart("transpose", 0, 13, tmp_path / "u1", tmp_path / "u2")
    p = bart_to_fastmri(tmp_path / "u", tmp_path / "u.h5")
    assert read_volume_info(p).attrs["bart_layout"] == ("3d-hybrid" if hybrid else "3d-kspace")
    _close(read_kspace(p), read_kspace(bart_to_fastmri(tmp_path / "u2", tmp_path / "u2.h5")))
