"""Lightning engine on tiny phantom data: exact resume after SIGKILL, NaN stop, checkpoints, per-volume metrics
(scored with the weights the run reports: best.ckpt by validation)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import yaml

from helpers_training import run_python, tiny_config, tiny_dataset
from mrlearn.config import config_from_dict
from mrlearn.errors import MrlearnError


from mrlearn.evaluation import metrics  # noqa: E402
from mrlearn.engine.checkpoint import load_checkpoint  # noqa: E402
from mrlearn.training.runner import load_module, train  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    cfg = tiny_config(data, out)
    return cfg, train(cfg)


def test_run_folder_holds_config_run_info_metrics_and_checkpoints(reference_run):
    cfg, result = reference_run
    d = result.run_dir
    assert config_from_dict(yaml.safe_load((d / "config.yaml").read_text())) == cfg
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "finished" and info["seed"] == cfg.seed and info["global_step"] == 12
    assert {"torch", "lightning", "mrlearn"} <= set(info["versions"])
    m = json.loads((d / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [0, 1] and set(m["volumes"]) == {"PD_sub-0003_axial.h5", "PD_sub-0004_coronal.h5"}
    assert m["final"]["val_psnr"] == pytest.approx(np.mean([v["psnr"] for v in m["volumes"].values()]))
    assert (d / "checkpoints" / "last.ckpt").is_file() and (d / "checkpoints" / "best.ckpt").is_file()
    assert not list(d.rglob("*.tmp"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(d / "tensorboard"))
    events.Reload()
    assert {"val_ssim", "val_psnr", "val_nmse", "val_loss", "train_loss"} <= set(events.Tags()["scalars"])
    assert "val/target|input|output|error" in events.Tags()["images"]
    image = events.Images("val/target|input|output|error")[0]
    assert image.width == 4 * 32 and image.height == 32  # target | input | output | error side by side


def test_validation_metrics_are_fastmri_metrics_per_volume(reference_run):
    from mrlearn import registry
    from mrlearn.training.inference import eval_dataset, iterate_volumes, module_predictor

    cfg, result = reference_run
    evaluated = json.loads((result.run_dir / "metrics.json").read_text())["evaluated"]
    assert evaluated["weights"] == "best" and evaluated["checkpoint"].endswith("best.ckpt")
    module = load_module(evaluated["checkpoint"], cfg)
    ds = eval_dataset(cfg.data.root + "/val",
                      registry.build("mask", cfg.mask, "mask"))
    for fname, pred, target, _ in iterate_volumes(ds, module_predictor(module), progress=False):
        got = result.volumes[fname]
        assert got["nmse"] == pytest.approx(metrics.nmse(target, pred), rel=1e-5)
        assert got["psnr"] == pytest.approx(metrics.psnr(target, pred), rel=1e-5)
        assert got["ssim"] == pytest.approx(metrics.ssim(target, pred), rel=1e-5)


def test_checkpoints_load_with_weights_only_and_mismatch_is_one_line(reference_run):
    cfg, result = reference_run
    ckpt = torch.load(result.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 12 and "optimizer_states" in ckpt
    other = tiny_config(cfg.data.root, result.run_dir, "model.chans=6")
    with pytest.raises(MrlearnError, match="checkpoint does not fit the model: shape mismatch") as err:
        load_module(result.run_dir / "checkpoints" / "last.ckpt", other)
    assert "\n" not in str(err.value)
    bad = result.run_dir / "not_a_checkpoint.ckpt"
    bad.write_bytes(b"garbage")
    with pytest.raises(MrlearnError, match="cannot load checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(MrlearnError, match="already holds a run"):
        train(cfg)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import lightning as L
    from helpers_training import tiny_config
    from mrlearn.training.runner import train

    class KillAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)

    train(tiny_config(sys.argv[1], sys.argv[2]), callbacks=[KillAt()])
""")


# 6 batches per epoch, step checkpoints every 2 steps (written after the kill callback of the same step):
# kill at 9 -> resume mid-epoch 2 from step 8; kill at 7 -> resume from the end-of-epoch-1 checkpoint (step 6).
@pytest.mark.parametrize("kill_at, resume_step", [(9, 8), (7, 6)])
def test_sigkill_then_resume_equals_uninterrupted(reference_run, data, tmp_path, kill_at, resume_step):
    import pathlib

    ref_cfg, ref = reference_run
    out = tmp_path / "killed"
    code = f"import sys; sys.argv = ['x', {str(data)!r}, {str(out)!r}, '{kill_at}']; sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})\n" + KILL_SCRIPT
    proc = run_python(code)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == resume_step
    resumed = train(tiny_config(data, out), resume=True)
    a = torch.load(ref.last_checkpoint, weights_only=True)["state_dict"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (ref.run_dir, out))
    assert ma["final"] == mb["final"] and ma["volumes"] == mb["volumes"] and ma["history"] == mb["history"]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["attempts"] == 2


def test_non_finite_loss_stops_naming_step_and_batch_and_keeps_last_good_checkpoint(data, tmp_path):
    import lightning as L

    class Poison(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:
                with torch.no_grad():
                    next(pl_module.model.parameters()).fill_(float("nan"))

    cfg = tiny_config(data, tmp_path / "nan")
    with pytest.raises(MrlearnError) as err:
        train(cfg, callbacks=[Poison()])
    msg = str(err.value)
    assert "loss is nan at step 3 (epoch 0, batch 3:" in msg and "PD_" in msg and "\n" not in msg
    assert "finite checkpoints kept:" in msg and "last.ckpt (step 2)" in msg
    info = json.loads((tmp_path / "nan" / "run.json").read_text())
    assert info["status"] == "failed" and "step 3" in info["error"]
    ckpt = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_trainer_settings_come_from_the_config(data, tmp_path):
    from mrlearn.training.runner import make_trainer, resolve_precision

    cfg = tiny_config(data, tmp_path / "t", "trainer.gradient_clip_val=0.5", "trainer.val_every=3")
    trainer, ckpt = make_trainer(cfg, tmp_path / "t")
    assert trainer.gradient_clip_val == 0.5 and trainer.check_val_every_n_epoch == 3
    assert resolve_precision(cfg) == "32-true" and ckpt.every_n_steps == 2
    with pytest.raises(MrlearnError, match="trainer:"):
        make_trainer(tiny_config(data, tmp_path / "t", "trainer.precision=bogus"), tmp_path / "t")


def test_every_trainer_silences_lightnings_known_warnings(data, tmp_path):
    """make_trainer (the one path of every runner to a Trainer) filters Lightning's harmless per-run warnings;
    other warnings stay."""
    import warnings

    from mrlearn.training.runner import make_trainer

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        make_trainer(tiny_config(data, tmp_path / "t"), tmp_path / "t")
        warnings.warn("The number of training batches (6) is smaller than the logging interval Trainer(...)")
        warnings.warn("something a user must see")
    assert [str(w.message) for w in seen if "logging interval" in str(w.message)] == []
    assert any("a user must see" in str(w.message) for w in seen)


def test_supervised_kspace_method_trains_an_unrolled_network(data, tmp_path):
    from mrlearn import registry

    if "unrolled" not in registry.available("model"):
        pytest.skip("models/unrolled.py is not in this checkout")
    cfg = tiny_config(data, tmp_path / "unrolled", "model={name: unrolled, cascades: 2, chans: 4, num_blocks: 1, maps: acs}",
                      "method.name=supervised_kspace", "trainer.max_epochs=1", "optim.name=adam")
    result = train(cfg)
    assert result.module.keep_kspace and set(result.volumes) == {"PD_sub-0003_axial.h5", "PD_sub-0004_coronal.h5"}
    assert np.isfinite(result.metrics["val_psnr"]) and result.history[0]["train_loss"] > 0
