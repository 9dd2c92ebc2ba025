"""Method recon_seg end to end on the tiny simulated dataset: training of every model kind, weightings, the
two-step pipeline, reconstruct writing labels, evaluate scoring them, and the bad-input cases."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from helpers_training import tiny_config, tiny_dataset
from mrlearn.errors import MrlearnError
from mrlearn.training.runner import train

FAST = ["method.name=recon_seg", "optim.name=adam", "optim.lr=0.003", "trainer.max_epochs=1",
        "trainer.limit_train_batches=3", "trainer.checkpoint_every_n_steps=0"]
MODELS = {
    "recon_then_seg": "{name: recon_then_seg, seg_chans: 4, seg_pools: 2, recon: {name: unrolled, cascades: 1, "
                      "chans: 4, num_blocks: 1, dc: gradient, maps: acs}}",
    "ynet": "{name: ynet, chans: 4, num_pools: 2}",
    "unrolled_seg": "{name: unrolled_seg, cascades: 2, chans: 4, seg_chans: 4, seg_pools: 2}",
    "cross_stitch": "{name: cross_stitch, chans: 4, num_pools: 2}",
    "sluice": "{name: sluice, chans: 4, num_pools: 2}",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("seg_data"))


def run(data, out, model, *extra):
    return train(tiny_config(data, out, f"model={MODELS[model]}", *FAST, *extra))


def check_finite(result):
    h = result.history[0]
    assert math.isfinite(h["loss/recon"]) and math.isfinite(h["loss/seg"]) and h["loss/seg"] > 0
    assert 0 <= result.metrics["val_dice"] <= 1 and math.isfinite(result.metrics["val_psnr"])
    assert math.isfinite(result.metrics["val_ssim"])


def test_the_tiny_dataset_carries_labels(data):
    with h5py.File(sorted((data / "train").glob("*.h5"))[0]) as f:
        seg, target_shape = f["segmentation"][()], f["reconstruction_rss"].shape
    assert seg.dtype == np.uint8 and seg.shape == target_shape and len(np.unique(seg)) > 2


@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_kind_trains(data, tmp_path, model):
    result = run(data, tmp_path, model)
    check_finite(result)
    assert result.module.checkpoint_monitor == ("val_ssim", "max")
    assert result.history[0]["weight/seg"] == 1.0 and result.history[0]["weight/recon"] == 1.0


@pytest.mark.parametrize("weighting", ["mgda", "gradnorm", "uncertainty"])
def test_mtl_weightings_combine_the_two_tasks(data, tmp_path, weighting):
    result = run(data, tmp_path, "ynet", f"method.weighting={weighting}")
    check_finite(result)
    assert result.module.automatic_optimization == (weighting == "uncertainty")
    if weighting != "uncertainty":  # gradient-based weights move away from the equal start
        assert result.history[0]["weight/recon"] != 1.0 or result.history[0]["weight/seg"] != 1.0


def test_two_step_pipeline_trains_the_segmenter_on_targets_with_the_reconstruction_frozen(data, tmp_path):
    first = run(data, tmp_path / "a", "recon_then_seg", "method.stage=recon", "name=step1")
    assert first.history[0]["loss/seg"] == 0.0
    second = run(data, tmp_path / "b", "recon_then_seg", "method.stage=seg", "method.seg_input=target",
                 f"model.init={first.best_checkpoint}", "method.monitor=val_dice", "name=step2")
    import torch

    recon_first = torch.load(first.best_checkpoint, weights_only=True)["state_dict"]
    recon_second = torch.load(second.best_checkpoint, weights_only=True)["state_dict"]
    keys = [k for k in recon_first if k.startswith("model.recon.")]
    assert keys and all(torch.equal(recon_first[k], recon_second[k]) for k in keys)  # frozen, as loaded
    assert any(not torch.equal(recon_first[k], recon_second[k]) for k in recon_first if k.startswith("model.segmenter."))
    assert second.module.checkpoint_monitor == ("val_dice", "max") and math.isfinite(second.metrics["val_dice"])


def test_reconstruct_writes_labels_and_evaluate_scores_them(data, tmp_path):
    result = run(data, tmp_path / "run", "ynet")
    out = tmp_path / "pred"
    cli = [sys.executable, "-m", "mrlearn.cli"]
    rec = subprocess.run([*cli, "reconstruct", "--checkpoint", str(result.best_checkpoint), "--data", str(data / "test"),
                          "--out", str(out), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert rec.returncode == 0, rec.stderr
    assert "and segmentation" in rec.stdout
    name = sorted(p.name for p in (data / "test").glob("*.h5"))[0]
    with h5py.File(out / name) as f, h5py.File(data / "test" / name) as t:
        assert f["segmentation"].dtype == np.uint8 and f["segmentation"].shape == f["reconstruction"].shape
        assert f["segmentation"].shape == t["segmentation"].shape and int(f["segmentation"][()].max()) < 8
        written_image, written_labels = f["reconstruction"][()], f["segmentation"][()]
    import mrlearn

    loaded = mrlearn.load_model(result.best_checkpoint)  # the Python API gives what the CLI wrote
    images, labels = loaded.segment_file(data / "test" / name)
    assert loaded.segments and np.array_equal(labels, written_labels)
    np.testing.assert_allclose(images, written_image, rtol=1e-5, atol=1e-6 * float(np.abs(written_image).max()))
    with h5py.File(data / "test" / name) as t:
        kspace = t["kspace"][()]
    one_image, one_labels = loaded.reconstruct_and_segment(kspace[0], name=name)
    assert one_labels.shape == one_image.shape and np.array_equal(one_labels, written_labels[0])
    ev = subprocess.run([*cli, "evaluate", "--target", str(data / "test"), "--pred", str(out)], capture_output=True,
                        text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr
    assert "mean foreground Dice" in ev.stdout
    report = json.loads((out / "metrics.json").read_text())
    seg = report["segmentation"]
    assert seg["summary"]["volumes"] == 2 and seg["summary"]["hd95_unit"] == "mm"
    row = seg["volumes"][0]
    assert len(row["dice"]) == 8 and row["names"][1] == "csf" and row["spacing_mm"][0] > 0
    from mrlearn.evaluation.segmentation import volume_scores

    with h5py.File(out / row["volume"]) as f, h5py.File(data / "test" / row["volume"]) as t:
        expected = volume_scores(f["segmentation"][()], t["segmentation"][()].astype(np.int64), 8, row["spacing_mm"])
    assert np.allclose([v if v is not None else np.nan for v in row["dice"]], expected["dice"], equal_nan=True)


def test_training_files_without_labels_are_refused_in_one_line(data, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(data, plain)
    for path in plain.rglob("*.h5"):
        with h5py.File(path, "a") as f:
            del f["segmentation"]
    with pytest.raises(MrlearnError, match=r"no 'segmentation' dataset \(class labels\).*method.stage: recon"):
        run(plain, tmp_path / "out", "ynet")
    result = run(plain, tmp_path / "out2", "ynet", "method.stage=recon")  # reconstruction alone needs no labels
    assert math.isfinite(result.metrics["val_psnr"]) and "val_dice" not in result.metrics


@pytest.mark.parametrize("extra, match", [
    (["model={name: unrolled, cascades: 1, chans: 4, num_blocks: 1, maps: acs}"], "not a joint reconstruction-segmentation"),
    (["method.seg_input=target"], "method.seg_input: 'target' trains a recon_then_seg segmenter alone"),
    (["model.num_classes=3"], r"label \d is outside the model's 3 classes"),
    (["method.weighting=pcgrad", "trainer.gradient_clip_val=1.0"], "trainer.gradient_clip_val: Lightning cannot clip"),
])
def test_bad_settings_are_one_line(data, tmp_path, extra, match):
    with pytest.raises(MrlearnError, match=match):
        run(data, tmp_path, "ynet", *extra)
