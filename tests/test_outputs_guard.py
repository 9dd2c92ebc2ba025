"""Outputs never overwrite inputs, and an output folder in use is locked (reconstruct, simulate --from-images)."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from helpers_data import write_test_volume
from mrlearn.cli import main


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture()
def data(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for i in range(2):
        write_test_volume(d / f"v{i}.h5", slices=1, coils=2, h=16, w=12, seed=i)
    return d


def _reconstruct(data: Path, out: Path | str) -> list[str]:
    return ["reconstruct", "--method", "zero-filled", "--data", str(data), "--out", str(out)]


@pytest.mark.parametrize("where", ["same", "same_file", "inside", "dot_path"])
def test_reconstruct_refuses_an_output_folder_that_holds_or_is_inside_the_inputs(data, where, capsys):
    before = _digest(data)
    out = {"same": data, "same_file": data, "inside": data / "recon", "dot_path": data / "sub" / ".."}[where]
    src = data / "v0.h5" if where == "same_file" else data
    assert main(_reconstruct(src, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and ("outputs never replace inputs" in err[0] or "inside the input" in err[0])
    assert _digest(data) == before and not (data / "recon").exists()


def test_reconstruct_never_replaces_a_raw_data_file_elsewhere(data, tmp_path, capsys):
    other = tmp_path / "other_raw"
    other.mkdir()
    write_test_volume(other / "v0.h5", slices=1, coils=2, h=16, w=12, seed=9)  # same name as an input, raw data
    before = _digest(other)
    assert main(_reconstruct(data, other)) == 2
    err = capsys.readouterr().err
    assert "v0.h5: exists and holds 'kspace'" in err and err.count("\n") == 1
    assert _digest(other) == before


def test_reconstruct_writes_outputs_and_releases_its_lock(data, tmp_path):
    out = tmp_path / "recon"
    assert main(_reconstruct(data, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["v0.h5", "v1.h5"]  # no .lock left behind
    with h5py.File(out / "v0.h5", "r") as f:
        assert "reconstruction" in f and "kspace" not in f
    assert main(_reconstruct(data, out)) == 0  # rewriting its own outputs is fine


def test_reconstruct_into_a_folder_in_use_is_refused(data, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "now"}))
        assert main(_reconstruct(data, out)) == 2
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid}" in err and err.count("\n") == 1
        assert not list(out.glob("*.h5"))
    finally:
        holder.kill()
        holder.wait()
    assert main(_reconstruct(data, out)) == 0  # the holder is gone: its stale lock is taken over
    assert sorted(p.name for p in out.glob("*.h5")) == ["v0.h5", "v1.h5"]


def test_simulate_from_images_refuses_the_input_folder_as_output(tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    src = tmp_path / "images"
    src.mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 2)).astype(np.float32), np.eye(4)), src / "a.nii.gz")
    before = _digest(src)
    assert main(["simulate", "--from-images", str(src), "--out", str(src)]) == 2
    assert "outputs never replace inputs" in capsys.readouterr().err
    assert _digest(src) == before
