"""Option values that used to be accepted and produce garbage are refused with one line."""

from __future__ import annotations

import pytest

from helpers_training import TINY_SET, tiny_dataset
from mrlearn.cli import main
from mrlearn.config import load_config
from mrlearn.errors import MrlearnError


@pytest.mark.parametrize("setting, fragment", [
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val: -1"),
    ("trainer.gradient_clip_val=.nan", "trainer.gradient_clip_val: nan"),
    ("trainer.limit_train_batches=-1", "trainer.limit_train_batches: -1"),
    ("trainer.limit_val_batches=1.5", "trainer.limit_val_batches: 1.5"),
    ("trainer.devices=0", "trainer.devices: 0"),
    ("name=.", "name: '.' does not name a folder inside runs"),
])
def test_config_values_out_of_range(setting, fragment):
    with pytest.raises(MrlearnError) as exc:
        load_config("unet_demo", [setting])
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_duplicate_yaml_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\noptim:\n  name: adam\n  lr: 0.1\n  lr: 0.001\n")
    with pytest.raises(MrlearnError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "key 'lr' appears twice" in msg and "(line 5)" in msg and "\n" not in msg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("opts") / "data")


@pytest.mark.parametrize("setting, fragment", [
    ("trainer.early_stopping={monitor: val_psnrr, patience: 2}", "'val_psnrr' is not logged by this method"),
    ("scheduler={name: step, step_size: 1, gamma: -0.5}", "gamma must be in (0, 1]"),
    ("method={name: supervised_kspace, loss: {name: l1}}", "'supervised_kspace' trains k-space networks"),
    ("method={name: ssdu}", "'ssdu' feeds 2-channel images; Unet has in_chans 1"),
    ("model={name: unrolled, cascades: 1, chans: 4}", "'supervised' trains image networks"),
    ("name=a\x00b", "cannot parse the value"),
])
def test_training_settings_that_would_never_act_or_not_fit_are_one_line(data, tmp_path, capsys, setting, fragment):
    """An early-stopping monitor never logged, a rate flipped by a negative gamma, a method that does not fit the
    model, a NUL in a name: each stops before training with one line."""
    args = ["train", "--config", "unet_demo", "--out", str(tmp_path / "r"), "--set", f"data.root={data}"]
    for item in (*TINY_SET, setting):
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


@pytest.mark.parametrize("setting, fragment", [("seed=-1", "seed: -1 is outside"), ("seed=4294967296", "outside [0, 2**32)")])
def test_seed_range(setting, fragment):
    with pytest.raises(MrlearnError) as exc:
        load_config("unet_demo", [setting])
    assert fragment in str(exc.value)


@pytest.mark.parametrize("device, fragment", [("foo", "unknown device 'foo'"), ("cuda:x", "unknown device")])
def test_reconstruct_device_names(tmp_path, capsys, device, fragment):
    from helpers_data import write_test_volume

    write_test_volume(tmp_path / "v.h5", slices=1, coils=2, h=16, w=16)
    assert main(["reconstruct", "--method", "zero-filled", "--data", str(tmp_path / "v.h5"), "--out",
                 str(tmp_path / "o"), "--device", device]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_evaluate_refuses_a_target_without_positive_values(tmp_path, capsys):
    import numpy as np

    from mrlearn.evaluation.evaluate import evaluate_volumes

    for target in (np.zeros((2, 8, 8)), -np.ones((2, 8, 8))):
        with pytest.raises(MrlearnError, match="all zero or negative"):
            evaluate_volumes([("v.h5", target, np.ones((2, 8, 8)))])


def test_training_refuses_files_whose_targets_are_all_zero(data, tmp_path, capsys):
    import shutil

    import h5py

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    victim = sorted((copy / "train").glob("*.h5"))[0]
    with h5py.File(victim, "r+") as f:
        f["reconstruction_rss"][...] = 0
        f.attrs["max"] = 0.0
    args = ["train", "--config", "unet_demo", "--out", str(tmp_path / "r"), "--set", f"data.root={copy}"]
    for item in TINY_SET:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert victim.name in err and "all zero or negative" in err and err.count("\n") == 1


def test_a_data_root_with_only_some_split_folders_says_which_is_missing(data, tmp_path, capsys):
    import shutil

    root = tmp_path / "only_train"
    shutil.copytree(data / "train", root / "train")
    args = ["train", "--config", "unet_demo", "--out", str(tmp_path / "r"), "--set", f"data.root={root}"]
    for item in TINY_SET:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "val: no such split folder" in err and "has train/ only" in err and err.count("\n") == 1


def test_summary_only_without_finished_runs_says_so(tmp_path, capsys):
    assert main(["study", "ssl_vs_supervised_tiny", "--out", str(tmp_path / "s"), "--summary-only"]) == 0
    out = capsys.readouterr().out
    assert "no finished run" in out and not (tmp_path / "s" / "study.csv").exists()


def test_plugins_named_by_the_user_must_import(monkeypatch):
    import mrlearn.registry as registry

    monkeypatch.setenv("MRLEARN_PLUGINS", "no_such_mrlearn_plugin")
    monkeypatch.setattr(registry, "_LOADED", set())
    with pytest.raises(MrlearnError, match="MRLEARN_PLUGINS: cannot import 'no_such_mrlearn_plugin'"):
        registry.find("runner", "train")


def test_unet_trains_on_images_smaller_than_its_pooling():
    import torch

    from mrlearn.models.unet import Unet

    net = Unet(1, 1, chans=4, num_pool_layers=4).train()
    x = torch.randn(2, 1, 6, 10)
    out = net(x)
    assert out.shape == x.shape
    out.mean().backward()


@pytest.mark.parametrize("weight", [0.5, 2.0])
def test_a_file_with_a_weighted_mask_is_refused(tmp_path, weight):
    import numpy as np

    from helpers_data import write_test_volume
    from mrlearn.data.fastmri import read_volume_info

    import h5py

    mask = np.where(np.arange(16) % 2 == 0, weight, 0.0)
    mask[6:10] = weight
    p = write_test_volume(tmp_path / "w.h5", slices=1, coils=2, h=16, w=16)
    with h5py.File(p, "r+") as f:
        f.create_dataset("mask", data=mask)
    with pytest.raises(MrlearnError, match=f"'mask' is not binary \\(holds {weight:g}\\)"):
        read_volume_info(p)
