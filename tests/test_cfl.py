"""BART .cfl/.hdr reading and writing: layout (column-major), header parsing, interop with `bart`, bad input."""

import shutil
import subprocess

import numpy as np
import pytest

from mrlearn.data.cfl import cfl_base, pad_dims, read_cfl, read_cfl_dims, write_cfl
from mrlearn.errors import MrlearnError

needs_bart = pytest.mark.skipif(shutil.which("bart") is None, reason="BART not installed")


def _crandn(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.mark.parametrize("shape", [(7,), (5, 3), (4, 3, 1, 2), (3, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2)])
def test_round_trip(tmp_path, shape):
    a = _crandn(shape)
    base = write_cfl(tmp_path / "x", a)
    assert base == tmp_path / "x"
    assert read_cfl_dims(tmp_path / "x.hdr") == shape
    np.testing.assert_array_equal(read_cfl(tmp_path / "x.cfl"), a)
    assert not list(tmp_path.glob("*.tmp"))


def test_column_major_layout_and_header_text(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3) + 1j * np.arange(6, dtype=np.float32).reshape(2, 3)
    write_cfl(tmp_path / "m", a)
    raw = np.fromfile(tmp_path / "m.cfl", dtype=np.float32)
    # first dim fastest: a[0,0], a[1,0], a[0,1], ... = 0, 3, 1, 4, 2, 5 (interleaved real, imag)
    np.testing.assert_array_equal(raw[0::2], [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(raw[1::2], [0, 3, 1, 4, 2, 5])
    assert (tmp_path / "m.hdr").read_text().splitlines()[:2] == ["# Dimensions", "2 3 "]


def test_reads_bart_style_header_with_trailing_dims_and_comments(tmp_path):
    a = _crandn((4, 3, 1, 2))
    a.astype("<c8").ravel(order="F").tofile(tmp_path / "k.cfl")
    (tmp_path / "k.hdr").write_text("# Dimensions\n4 3 1 2 1 1 1 1 1 1 1 1 1 1 1 1 \n# Command\nphantom\n# Creator\nBART\n")
    assert read_cfl(tmp_path / "k").shape == (4, 3, 1, 2)
    np.testing.assert_array_equal(read_cfl(tmp_path / "k"), a)
    assert pad_dims(a).shape == (4, 3, 1, 2) + (1,) * 12
    assert cfl_base("dir/a.hdr").name == "a" and cfl_base("dir/a").name == "a"


@needs_bart
def test_bart_reads_ours_and_we_read_bart(tmp_path):
    a = _crandn((10, 6, 1, 3), seed=1)
    write_cfl(tmp_path / "a", a)
    subprocess.run(["bart", "transpose", "0", "1", str(tmp_path / "a"), str(tmp_path / "t")], check=True, capture_output=True)
    subprocess.run(["bart", "fft", "-u", "3", str(tmp_path / "a"), str(tmp_path / "f")], check=True, capture_output=True)
    np.testing.assert_array_equal(read_cfl(tmp_path / "t"), np.swapaxes(a, 0, 1))
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(a, axes=(0, 1)), axes=(0, 1), norm="ortho"), axes=(0, 1))
    np.testing.assert_allclose(read_cfl(tmp_path / "f"), ref, atol=2e-6)  # BART's centered unitary FFT == ours


def test_missing_header(tmp_path):
    with pytest.raises(MrlearnError) as exc:
        read_cfl(tmp_path / "none")
    assert "none.hdr" in str(exc.value) and "not found" in str(exc.value)


def test_missing_data_file(tmp_path):
    (tmp_path / "h.hdr").write_text("# Dimensions\n2 2\n")
    with pytest.raises(MrlearnError) as exc:
        read_cfl(tmp_path / "h")
    assert "h.cfl" in str(exc.value)


def test_malformed_header(tmp_path):
    (tmp_path / "b.hdr").write_text("# Dims\nabc\n")
    (tmp_path / "b.cfl").write_bytes(b"\0" * 8)
    with pytest.raises(MrlearnError) as exc:
        read_cfl(tmp_path / "b")
    assert "Dimensions" in str(exc.value) and "\n" not in str(exc.value)


def test_truncated_data(tmp_path):
    write_cfl(tmp_path / "t", _crandn((4, 4)))
    data = (tmp_path / "t.cfl").read_bytes()
    (tmp_path / "t.cfl").write_bytes(data[:-8])
    with pytest.raises(MrlearnError) as exc:
        read_cfl(tmp_path / "t")
    assert "t.cfl" in str(exc.value) and "truncated" in str(exc.value)
