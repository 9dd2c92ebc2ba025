"""The fastMRI recipe as the README writes it, on a tiny folder in fastMRI's layout: multi-coil split folders found
although the config names single-coil ones, a wrong root named with the subfolder looked in, a failed run started
again in its folder (finished, running and interrupted runs stay protected), loader workers capped at the CPUs."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
import yaml

import mrlearn
from helpers_data import make_kspace, rss_target
from mrlearn.cli import main
from mrlearn.data.fastmri import make_ismrmrd_header, write_volume
from mrlearn.data.layout import fastmri_folders
from mrlearn.data.workers import available_cpus
from mrlearn.engine.runfolder import RunFolder
from mrlearn.errors import MrlearnError

H, W, PAD, RECON = 64, 40, 4, 32  # readout oversampled 2x, 4 zero-padded columns on each side, as fastMRI knee


def knee_like(path, seed: int) -> None:
    """A multi-coil fastMRI-format volume: zero-padded edge columns named by the header, RSS target 32 x 32."""
    k = make_kspace(slices=2, coils=4, h=H, w=W, seed=seed)
    k[..., :PAD] = 0
    k[..., W - PAD :] = 0
    acquired = W - 2 * PAD
    header = make_ismrmrd_header((H, W), (RECON, RECON), enc_center=acquired // 2, enc_max=acquired - 1)
    full = rss_target(k)
    top, left = (H - RECON) // 2, (W - RECON) // 2
    write_volume(path, k, target=full[:, top : top + RECON, left : left + RECON], acquisition="CORPD_FBK",
                 header=header, patient_id=f"p{seed}")


@pytest.fixture(scope="module")
def knee(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastmri") / "knee"
    for split, seeds in (("multicoil_train", (1, 2)), ("multicoil_val", (3,))):
        (root / split).mkdir(parents=True)
        for seed in seeds:
            knee_like(root / split / f"file{1000 + seed}.h5", seed)
    return root


FEW_STEPS = ["trainer.max_epochs=1", "trainer.max_steps=2", f"data.recon_size=[{RECON},{RECON}]",
             "trainer.accelerator=cpu", "trainer.progress_bar=false", "trainer.logger=csv"]


def recipe(root, out, *extra: str) -> list[str]:
    """README: mrlearn train --config unet_fastmri_knee --set data.root=<root>, made short by --set."""
    args = ["train", "--config", "unet_fastmri_knee", "--set", f"data.root={root}", "--out", str(out)]
    for item in (*FEW_STEPS, *extra):
        args += ["--set", item]
    return args


def test_the_recipe_runs_as_written_on_multicoil_folders(knee, tmp_path, capsys):
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(recipe(knee, out)) == 0
    err = capsys.readouterr().err
    assert "holds multicoil folders (multicoil_train/, multicoil_val/), not the configured singlecoil_train/" in err
    saved = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert (saved["train"], saved["val"], saved["test"]) == ("multicoil_train", "multicoil_val", "multicoil_test")
    assert saved["num_workers"] == 4  # the config keeps what was asked; the loader uses what the machine has
    if available_cpus() < 4:
        assert f"data.num_workers 4 is more than the {available_cpus()} CPUs available" in err
        assert err.count("data.num_workers 4 is more than") == 1  # said once, not per loader
    assert not [w for w in caught if "worker" in str(w.message) and "suggested max" in str(w.message)]
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    # docs/howto/submission.md: the checkpoint on test-style files (own mask, no target) -> submission files
    test = tmp_path / "multicoil_test"
    test.mkdir()
    k = make_kspace(slices=2, coils=4, h=H, w=W, seed=9)
    k[..., :PAD] = 0
    k[..., W - PAD :] = 0
    mask = np.zeros(W, np.float32)
    mask[PAD : W - PAD : 3] = 1
    mask[W // 2 - 4 : W // 2 + 4] = 1
    header = make_ismrmrd_header((H, W), (RECON, RECON), enc_center=(W - 2 * PAD) // 2, enc_max=W - 2 * PAD - 1)
    write_volume(test / "file2000.h5", k * mask, mask=mask, header=header, acquisition="CORPD_FBK",
                 attrs={"acceleration": 4, "num_low_frequency": 8})
    sub = tmp_path / "submission"
    assert main(["reconstruct", "--checkpoint", str(out / "checkpoints" / "last.ckpt"), "--data", str(test),
                 "--out", str(sub)]) == 0
    assert sorted(p.name for p in sub.iterdir()) == ["file2000.h5"]
    with h5py.File(sub / "file2000.h5") as f:
        assert list(f) == ["reconstruction"] and f["reconstruction"].dtype == np.float32
        written = f["reconstruction"][()]
    assert written.shape == (2, RECON, RECON)
    own = mrlearn.load_model(out / "checkpoints" / "last.ckpt").reconstruct(k * mask, mask)  # its own samples
    np.testing.assert_allclose(written, own, rtol=1e-5, atol=1e-6 * float(own.max()))


def test_the_folder_choice_keeps_what_the_root_has(tmp_path):
    folders = {"train": "singlecoil_train", "val": "singlecoil_val", "test": "singlecoil_test"}
    for name in ("singlecoil_train", "singlecoil_val", "multicoil_train", "multicoil_val"):
        (tmp_path / name).mkdir()
    assert fastmri_folders(tmp_path, folders) == (folders, None)  # both kinds: the configured one
    own = {"train": "train", "val": "val", "test": "test"}
    assert fastmri_folders(tmp_path, own) == (own, None)  # not fastMRI's names: never renamed


def test_a_wrong_root_names_the_subfolder_and_a_failed_run_starts_again(knee, tmp_path, capsys):
    out = tmp_path / "run"
    wrong = knee.parent  # one level too high: holds knee/, not the split folders
    assert main(recipe(wrong, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "has no singlecoil_train/ folder (data.train)" in err[0] and "it has knee/" in err[0]
    assert "set data.root to the folder that holds singlecoil_train/ and singlecoil_val/" in err[0]
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    # the corrected command, same --out: runs without --resume or another folder
    assert main(recipe(knee, out)) == 0
    err = capsys.readouterr().err
    assert "the run there had failed" in err and "wrote no checkpoint, so its files were removed" in err
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["attempts"] == 2 and "singlecoil_train" in info["restarted_after"]
    # a finished run is still protected
    assert main(recipe(knee, out)) == 2
    assert "already holds a run (status finished)" in capsys.readouterr().err


@pytest.mark.parametrize("status", ["running", "interrupted", "finished"])
def test_running_interrupted_and_finished_runs_stay_protected(tmp_path, status):
    (tmp_path / "run.json").write_text(json.dumps({"status": status, "attempts": 1}))
    (tmp_path / "config.yaml").write_text("name: x\n")
    with pytest.raises(MrlearnError, match=f"already holds a run \\(status {status}\\)"):
        with RunFolder(tmp_path, "name: y\n", 0):
            pass
    assert (tmp_path / "config.yaml").read_text() == "name: x\n"


def test_a_failed_run_with_checkpoints_keeps_them_aside(tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps({"status": "failed", "attempts": 1, "error": "NonFiniteError: NaN"}))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (tmp_path / "metrics.json").write_text("{}")
    with RunFolder(tmp_path, "name: y\n", 0) as run:
        run.finished()
    kept = tmp_path / "failed_attempt_1"
    assert (kept / "checkpoints" / "last.ckpt").read_bytes() == b"weights" and (kept / "metrics.json").is_file()
    assert json.loads((kept / "run.json").read_text())["status"] == "failed"
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "finished" and info["attempts"] == 2 and info["restarted_after"] == "NonFiniteError: NaN"
    assert f"kept in {kept}/" in capsys.readouterr().err
