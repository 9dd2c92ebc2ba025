"""End to end on tiny phantom data: Lightning multi-task training through the study runner (real files, real fit)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mrlearn.errors import MrlearnError

torch.set_num_threads(1)

TINY = ["trainer.max_steps=3", "trainer.max_epochs=100", "trainer.val_every=100", "model.cascades=2", "model.chans=4",
        "model.split=1", "data.batch_size=2", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    opts = SimulationOptions(anatomy="phantom", matrix=(32, 32), slices=2, subjects=(2, 1, 1), contrasts=("PD", "T2"),
                             coils=2)
    return Path(simulate_dataset(tmp_path_factory.mktemp("mtltrain") / "data", opts))


def _study(tmp_path: Path, data: Path, arms: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "base": "mtl_tiny", "set": [f"data.root={data}", *TINY],
                                    "seeds": [0], "arms": arms,
                                    "summary": {"baseline": "stl"} if "stl" in arms else {}}, sort_keys=False))
    return path


def test_study_of_mtl_arms_runs_and_reruns_identically(tmp_path, data):
    from mrlearn.study import load_study, run_study

    arms = {"stl": {"tasks.separate": True, "model.sharing": "all"},
            "mgda": {"model.sharing": "early", "tasks.weighting": "mgda", "tasks.strategy": "stratified"}}
    out = run_study(load_study(_study(tmp_path, data, arms)), tmp_path / "out", log=lambda s: None)
    rows = list(csv.DictReader(open(out / "study.csv")))
    assert {(r["arm"], r["group"]) for r in rows} == {("stl", "pd"), ("stl", "scarce"), ("mgda", "pd"), ("mgda", "scarce")}
    assert all(np.isfinite(float(r["psnr"])) and 0 < float(r["ssim"]) <= 1 for r in rows)  # 3 steps: bookkeeping only
    mgda = out / "runs" / "mgda__seed0"
    metrics = json.loads((mgda / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["train_sizes"] == {"pd": 4, "scarce": 1}
    assert len(list(csv.DictReader(open(mgda / "slices.csv")))) == 4  # 2 test volumes x 2 slices
    stl = json.loads((out / "runs" / "stl__seed0" / "metrics.json").read_text())
    assert stl["steps"] == 6  # one single-task model per task, 3 steps each
    assert (out / "paired_differences.csv").is_file() and (out / "report.html").stat().st_size > 1000
    # TensorBoard got the learned weights and per-task losses
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(mgda / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "weight/pd" in tags and "loss/scarce" in tags
    # same seed, same numbers: a fresh study folder reproduces the run exactly
    again = run_study(load_study(_study(tmp_path, data, {"mgda": arms["mgda"]})), tmp_path / "again", log=lambda s: None)
    first = json.loads((mgda / "result.json").read_text())["groups"]
    second = json.loads((again / "runs" / "mgda__seed0" / "result.json").read_text())["groups"]
    assert first == second


def test_transfer_and_pooled_baselines(tmp_path, data):
    from mrlearn.study import load_study, run_study

    arms = {"stl": {"tasks.separate": True, "model.sharing": "all"},
            "transfer": {"tasks.transfer": {"pretrain_fraction": 0.5}, "model.num_tasks": 1, "model.sharing": "all"},
            "transfer_each": {"tasks.transfer": {"pretrain_fraction": 0.5, "phase_caps": "each"}, "model.num_tasks": 1,
                              "model.sharing": "all", "trainer.val_every_n_steps": 1,  # a plateau after 2 steps
                              "trainer.early_stopping": {"patience": 1, "min_delta": 100.0}},
            "pooled": {"tasks.pooled": True, "model.num_tasks": 1, "model.sharing": "all", "tasks.weighting": "inverse"}}
    spec = load_study(_study(tmp_path, data, arms))
    spec.set.append("trainer.max_steps=4")
    out = run_study(spec, tmp_path / "out", log=lambda s: None)
    transfer = json.loads((out / "runs" / "transfer__seed0" / "metrics.json").read_text())
    assert transfer["steps"] == 4  # 2 pretraining + 2 fine-tuning steps: the same budget
    assert (out / "runs" / "transfer__seed0" / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    each = json.loads((out / "runs" / "transfer_each__seed0" / "metrics.json").read_text())
    phases = [each["phases"][p]["steps"] for p in ("pretrain", "finetune")]
    assert phases == [2, 2] and each["steps"] == 4  # each phase stopped early under its own cap of 4; the total counts
    assert [each["phases"][p]["stopped_by"] for p in ("pretrain", "finetune")] == ["early_stopping"] * 2
    assert set(transfer["tasks"]) == {"pd", "scarce"}


def test_config_errors_are_one_line(tmp_path, data):
    from mrlearn.config import load_config

    base = [f"data.root={data}"]
    with pytest.raises(MrlearnError, match=r"tasks.tasks.1.slice_fraction: must be in \(0, 1\]"):
        load_config("mtl_tiny", [*base, "tasks.tasks=[{name: a}, {name: b, slice_fraction: 2.0}]"])
    with pytest.raises(MrlearnError, match=r"tasks.tasks.0.contrast: unknown key"):
        load_config("mtl_tiny", [*base, "tasks.tasks=[{name: a, contrast: [PD]}]"])
    with pytest.raises(MrlearnError, match=r"tasks.weighting.name: unknown weighting 'dwb'"):
        load_config("mtl_tiny", [*base, "tasks.weighting=dwb"])
    with pytest.raises(MrlearnError, match=r"tasks.ratio: needs 2 positive numbers"):
        load_config("mtl_tiny", [*base, "tasks.ratio=[1]"])
    with pytest.raises(MrlearnError, match=r"tasks.max_samples.t2: is not a task of this run.*pd, scarce"):
        load_config("mtl_tiny", [*base, "tasks.max_samples={t2: 10}"])
    with pytest.raises(MrlearnError, match=r"tasks.max_samples.scarce: must be a positive number of samples, got 0"):
        load_config("mtl_tiny", [*base, "tasks.max_samples={scarce: 0}"])
    from mrlearn.mtl.train import train_mtl

    cfg = load_config("mtl_tiny", [*base, *TINY, "model.num_tasks=3", f"out_dir={tmp_path / 'r'}"])
    with pytest.raises(MrlearnError, match=r"model.num_tasks: is 3 but the run has 2 model task"):
        train_mtl(cfg)
    cfg = load_config("mtl_tiny", [*base, *TINY, "tasks.tasks=[{name: a, contrasts: [FLAIR]}]", "model.num_tasks=1",
                                   f"out_dir={tmp_path / 'r2'}"])
    with pytest.raises(MrlearnError, match=r"unknown contrast\(s\) FLAIR; contrasts present: PD, T2"):
        train_mtl(cfg)


def test_knee_study_on_single_slice_320_volumes_without_header(tmp_path):
    """The fastMRI knee study config runs on a flat folder of single-slice 320 x 320 volumes (no ismrmrd header)."""
    import numpy as np

    from mrlearn.data.fastmri import write_volume
    from mrlearn.physics.fft import fft2c
    from mrlearn.study import load_study, run_study

    root = tmp_path / "knee"
    root.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-160:160, -160:160] / 160.0
    for acq in ("CORPD_FBK", "CORPDFS_FBK"):
        for i in range(3):
            image = ((xx ** 2 / 0.5 + yy ** 2 / 0.7) < 1).astype(np.float32) * (1.0 + 0.1 * i) * (0.5 if "FS" in acq else 1)
            coils = np.stack([image * np.exp(-((xx - c) ** 2)) for c in (-0.5, 0.5)]).astype(np.complex64)
            coils = coils + 0.01 * rng.standard_normal(coils.shape)
            kspace = fft2c(torch.as_tensor(coils.astype(np.complex64))).numpy()[None] * 1e-6  # scanner-like scale
            target = np.sqrt((np.abs(coils) ** 2).sum(0))[None].astype(np.float32) * 1e-6
            write_volume(root / f"{acq}_{i}.h5", kspace, target=target, acquisition=acq)
    spec = load_study("mtl_knee_fastmri", [f"data.root={root}", "data.num_workers=0", "model.cascades=2",
                                           "model.chans=2", "model.num_pools=1", "trainer.max_steps=2",
                                           "trainer.accelerator=cpu", "trainer.val_every=100",
                                           "tasks.tasks.0.slice_count=1", "tasks.tasks.1.slice_count=1"])
    spec.seeds, spec.grid = [0], {}
    spec.arms = {"mtl_dwa_early": {"model.sharing": "early", "model.split": 1}}
    out = run_study(spec, tmp_path / "out", log=lambda s: None)
    rows = list(csv.DictReader(open(out / "study.csv")))
    assert {r["group"] for r in rows} == {"pd", "scarce"} and len(rows) == 2
    assert all(np.isfinite(float(r["psnr"])) for r in rows)


def test_multitask_training_beats_zero_filled_on_every_task(tmp_path, data):
    """A learned method must improve on its input: every task's test PSNR beats the zero-filled input by 0.5 dB."""
    from mrlearn.config import load_config
    from mrlearn.mtl.train import train_mtl

    cfg = load_config("mtl_tiny", [f"data.root={data}", *TINY, "trainer.max_steps=60", "trainer.val_every=10",
                                   "tasks.weighting=equal", "optim.lr=0.003", f"out_dir={tmp_path / 'run'}"])
    outcome = train_mtl(cfg)
    zf = outcome.extra["zero_filled"]
    assert set(outcome.groups) == set(zf) == {"pd", "scarce"}
    for task, m in outcome.groups.items():
        assert m["psnr"] > zf[task]["psnr"] + 0.5, (task, m["psnr"], zf[task]["psnr"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["selected"] == "best" and metrics["best_step"] is not None
    # shuffled: an epoch is the 5 training slices (pd 4, scarce 1) in 3 batches, so 60 steps = 20 epochs
    assert metrics["samples_per_task"] == {"pd": 80, "scarce": 20}


def test_max_samples_ends_each_model_when_its_task_reaches_the_count(tmp_path, data):
    """The scarce task (1 training slice, so at most 1 sample per step) stops every model that trains it after
    exactly 3 samples; a model without a capped task runs to max_steps."""
    from mrlearn.study import load_study, run_study

    arms = {"stl": {"tasks.separate": True, "model.sharing": "all"}, "mtl": {"model.sharing": "early"},
            "transfer": {"tasks.transfer": {"pretrain_fraction": 0.5}, "model.num_tasks": 1, "model.sharing": "all"}}
    spec = load_study(_study(tmp_path, data, arms), ["trainer.max_steps=12", "tasks.max_samples={scarce: 3}",
                                                     "budget=equal_samples_per_task"])
    out = run_study(spec, tmp_path / "out", log=lambda s: None)
    mtl = json.loads((out / "runs" / "mtl__seed0" / "metrics.json").read_text())
    assert mtl["stopped_by"] == "max_samples" and mtl["samples_per_task"]["scarce"] == 3 and mtl["steps"] < 12
    stl = json.loads((out / "runs" / "stl__seed0" / "metrics.json").read_text())
    assert stl["samples_per_task"] == {"pd": 24, "scarce": 3}  # pd: 12 steps x 2; scarce: 3 steps x 1
    runs = stl["per_task_runs"]
    assert (runs["pd"]["stopped_by"], runs["scarce"]["stopped_by"]) == ("max_steps", "max_samples")
    assert runs["scarce"]["steps"] == 3
    transfer = json.loads((out / "runs" / "transfer__seed0" / "metrics.json").read_text())
    phases = transfer["phases"]  # pretraining (pd only) has no capped task: it runs its 6 steps
    assert (phases["pretrain"]["stopped_by"], phases["finetune"]["stopped_by"]) == ("max_steps", "max_samples")
    assert transfer["samples_per_task"] == {"pd": 12, "scarce": 3}
    rows = {(r["arm"], r["group"]): r for r in csv.DictReader(open(out / "study.csv"))}
    assert "max_samples" in rows[("mtl", "scarce")]["stopped_by"]
    # the policy is checked before any run starts
    with pytest.raises(MrlearnError, match=r"equal_samples_per_task but tasks.max_samples differs"):
        run_study(load_study(_study(tmp_path, data, arms), ["budget=equal_samples_per_task",
                                                            "tasks.max_samples={scarce: 3}",
                                                            "arms.mtl.tasks.max_samples={scarce: 4}"]),
                  tmp_path / "o", log=lambda s: None)
    with pytest.raises(MrlearnError, match=r"equal_samples_per_task but run stl__seed0 has no tasks.max_samples"):
        run_study(load_study(_study(tmp_path, data, arms), ["budget=equal_samples_per_task"]), tmp_path / "o2",
                  log=lambda s: None)


def test_every_epoch_draws_its_own_batches_and_a_resumed_epoch_skips_the_done_ones(data):
    """Lightning sets the epoch through ``loader.batch_sampler.sampler``: the multi-task batch sampler must take it,
    or every epoch repeats epoch 0's batches (and masks); ``resume_at`` skips the batches of the interrupted epoch."""
    from lightning.fabric.utilities.data import _set_sampler_epoch

    from mrlearn.config import load_config
    from mrlearn.mtl.data import MultiTaskDataModule

    dm = MultiTaskDataModule(load_config("mtl_tiny", [f"data.root={data}", *TINY]))
    loader = dm.train_dataloader()
    epochs = []
    for epoch in (0, 1):
        _set_sampler_epoch(loader, epoch)
        epochs.append([list(b) for b in loader.batch_sampler])
    assert all(k[1] == e for e, batches in enumerate(epochs) for b in batches for k in b)  # the epoch reaches the keys
    assert [[k[0] for k in b] for b in epochs[0]] != [[k[0] for k in b] for b in epochs[1]]
    dm.resume_at(len(loader.batch_sampler) + 1)  # 1 epoch and 1 batch done
    resumed = [list(b) for b in dm.train_dataloader().batch_sampler]
    assert resumed == epochs[1][1:]
