"""Stopping that holds up: a smoothed plateau rule, patience in training samples, learning-rate cuts that restart
the window, the study's stopping check (reruns at doubled patience and caps), and a split that no run seed enters."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers_training import tiny_config, tiny_dataset
from mrlearn.config import load_config
from mrlearn.engine.convergence import Convergence
from mrlearn.engine.plateau import Plateau, smooth
from mrlearn.errors import MrlearnError

# ----------------------------------------------------------------------------------------------- the plateau rule


def _run(plateau: Plateau, values, samples=None) -> tuple[int | None, list]:
    """Feed ``values``; (index of the stop or None, the actions)."""
    actions = []
    for i, v in enumerate(values):
        a = plateau.push(v, samples[i] if samples else 0)
        actions.append(a)
        if a == "stop":
            return i, actions
    return None, actions


def zigzag_rise(n: int = 40) -> np.ndarray:
    """PSNR rising 0.04 dB per validation, zigzagging by +-0.2 dB (steps of 0.3-0.5 dB), with a +0.5 dB spike every
    12 validations: the raw maximum is a spike that the rise needs 15 validations to beat."""
    t = np.arange(n)
    values = 30 + 0.04 * t + 0.2 * (-1.0) ** t
    values[[5, 17, 29]] += 0.5
    return values


def test_smoothing_keeps_a_zigzagging_rise_going_that_the_raw_rule_stops():
    values = zigzag_rise()
    assert np.median(np.abs(np.diff(values))) > 0.3  # the zigzag of the tracker: 0.3-0.5 dB
    raw_stop, _ = _run(Plateau("max", patience=6, min_delta=0.1), values)
    ema_stop, _ = _run(Plateau("max", patience=6, min_delta=0.1, smoothing="ema", window=5), values)
    assert raw_stop == 11  # the raw rule fires 6 validations after the first spike
    assert ema_stop is None  # the smoothed series keeps improving: 0.04 dB a validation
    # and the smoothed rule still stops once the curve is flat (the same zigzag and spikes without the rise)
    flat = values - 0.04 * np.arange(values.size)
    flat_stop, _ = _run(Plateau("max", patience=6, min_delta=0.1, smoothing="ema", window=5), flat)
    assert flat_stop == 10  # decisions start at validation 4 (5 values in); 6 later without a gain


def test_smoothers_closed_forms():
    alt = [1.0, -1.0] * 20
    ema = smooth(alt, "ema", 5)  # a = 1/3: the alternation keeps amplitude a / (2 - a) = 1/5
    assert abs(ema[-1]) == pytest.approx(0.2, abs=1e-3) and abs(ema[-2]) == pytest.approx(0.2, abs=1e-3)
    med = smooth([1.0, 1.0, 9.0, 1.0, float("nan"), 1.0], "median", 3)
    assert med == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # the outlier is gone; a NaN leaves the value unchanged
    assert smooth([float("nan"), 2.0], "ema", 3) == [None, 2.0]


def test_a_cut_restarts_the_window_so_the_run_sees_a_full_window_at_its_final_rate():
    p = Plateau("max", patience=3, lr_patience=2, max_lr_cuts=2)
    stop, actions = _run(p, [1.0] + [0.5] * 20)
    # cuts 2 validations after the best (index 2) and 2 after that cut (index 4); stop 3 after the last cut
    assert [i for i, a in enumerate(actions) if a == "cut"] == [2, 4] and stop == 7 and p.cuts == 2
    # an improvement after a cut moves the anchor too: the window restarts from there
    p = Plateau("max", patience=3, lr_patience=2, max_lr_cuts=1)
    stop, actions = _run(p, [1.0, 0.5, 0.5, 2.0, 0.5, 0.5, 0.5, 0.5])
    assert actions[2] == "cut" and stop == 6
    # default number of cuts: as many as the earlier rule made inside one window
    assert Plateau("max", patience=7, lr_patience=2).max_lr_cuts == 3


def test_patience_in_samples_counts_samples_not_validations():
    p = Plateau("min", patience_samples=100)
    stop, _ = _run(p, [1.0] + [2.0] * 10, samples=[40 * (i + 1) for i in range(11)])
    assert stop == 3  # 160 - 40 = 120 >= 100 samples after the best at 40 samples (80 is not enough)
    with pytest.raises(ValueError):
        Plateau("max", patience=3, patience_samples=10)


def fake_trainer(step: int, value: float, world: int = 1) -> SimpleNamespace:
    return SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="fit"), global_step=step, current_epoch=0,
                           callback_metrics={"val_psnr": torch.tensor(value)}, should_stop=False, world_size=world,
                           optimizers=[])


@pytest.mark.parametrize("batch", [2, 4])
def test_callback_counts_batch_samples_and_keeps_its_state(batch):
    cb = Convergence("val_psnr", "max", patience_samples=16, smoothing="ema", smoothing_window=3)
    step = 0
    while not cb.stopped_early and step < 100:
        step += 1
        trainer = fake_trainer(step, 30.0)
        cb.on_train_batch_end(trainer, None, None, {"kspace": torch.zeros(batch, 2, 4, 4), "fname": ["a"] * batch}, 0)
        cb.on_validation_end(trainer, None)  # a validation after every step
    # decisions start at the 3rd validation (the smoother's window); then 16 samples at either batch size
    assert cb.samples == batch * step and step == 3 + 16 // batch
    again = Convergence("val_psnr", "max", patience_samples=16, smoothing="ema", smoothing_window=3)
    again.load_state_dict(json.loads(json.dumps(cb.state_dict())))
    assert again.samples == cb.samples and again.plateau.smoothed == cb.plateau.smoothed and again.stopped_early


def test_config_refuses_both_patience_units_and_fills_the_default():
    with pytest.raises(MrlearnError) as exc:
        load_config("unet_demo", ["trainer.early_stopping={patience: 3, patience_samples: 100}"])
    assert "trainer.early_stopping" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(MrlearnError, match="smoothing_window"):
        load_config("unet_demo", ["trainer.early_stopping={smoothing: ema, smoothing_window: 0}"])
    with pytest.raises(MrlearnError, match="smoothing"):
        load_config("unet_demo", ["trainer.early_stopping={smoothing: mean}"])
    assert load_config("unet_demo", ["trainer.early_stopping={}"]).trainer.early_stopping.patience == 5
    es = load_config("unet_demo", ["trainer.early_stopping={patience_samples: 64}"]).trainer.early_stopping
    assert es.patience is None and es.patience_samples == 64


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("stop") / "data")


def test_training_window_in_samples_scales_with_batch_size(data, tmp_path):
    from mrlearn.training.runner import train

    waited = {}
    for batch in (2, 4):  # lr 0: a flat metric; decisions start at validation 2 (EMA window 2), then 8 samples
        out = tmp_path / f"b{batch}"
        train(tiny_config(data, out, "optim.lr=0.0", f"data.batch_size={batch}", "trainer.val_every_n_steps=1",
                          "trainer.max_epochs=10",
                          "trainer.early_stopping={patience_samples: 8, smoothing: ema, smoothing_window: 2}"))
        m = json.loads((out / "metrics.json").read_text())
        assert m["stopped_by"] == "early_stopping" and m["patience_samples"] == 8 and m["smoothing"] == "ema"
        assert m["samples"] == batch * m["steps"] and m["best_step"] == 1 and m["stopped_at_best"] is False
        waited[batch] = m["steps"] - 2
    assert waited == {2: 4, 4: 2}  # the same 8 samples: twice the steps at half the batch


# ------------------------------------------------------------------------------------------------- fixed split


def test_split_by_subject_is_the_same_for_every_seed_and_keeps_subjects_whole(tmp_path):
    from mrlearn.data.fastmri import write_volume
    from mrlearn.training.data import split_dataset

    rng = np.random.default_rng(0)
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(10):  # 10 subjects, two contrasts each (one file per contrast)
        for acq in ("CORPD_FBK", "CORPDFS_FBK"):
            k = (rng.standard_normal((1, 2, 16, 16)) + 1j * rng.standard_normal((1, 2, 16, 16))).astype(np.complex64)
            write_volume(root / f"{acq}_{i:02d}.h5", k, target=np.abs(k).sum(1).astype(np.float32) + 1,
                         acquisition=acq, patient_id=f"subject-{i}")
    splits = {}
    for seed in (0, 1, 7):
        cfg = load_config("unet_demo", [f"data.root={root}", f"seed={seed}", "data.contrasts=null",
                                        "data.split_fractions=[0.6, 0.2, 0.2]"])
        splits[seed] = {s: sorted({split_dataset(cfg, s).sample_key(i)[0] for i in range(len(split_dataset(cfg, s)))})
                        for s in ("train", "val", "test")}
    assert splits[0] == splits[1] == splits[7]  # the run seed does not enter the split
    owner = {}
    for s, names in splits[0].items():
        for name in names:
            subject = name.split("_")[-1].split(".")[0]
            assert owner.setdefault(subject, s) == s  # both contrasts of a subject in one split
    assert [len(splits[0][s]) for s in ("train", "val", "test")] == [12, 4, 4]  # 6 / 2 / 2 subjects x 2 files


def test_split_by_subject_closed_form():
    from mrlearn.data.subjects import split_by_subject, subject_key

    files = [f"v{i}.h5" for i in range(10)]
    parts = split_by_subject(files, [""] * 10, (0.8, 0.1, 0.1))
    order = sorted(range(10), key=lambda i: subject_key(f"v{i}"))  # no patient_id: the file name is the subject
    assert [p.name for p in parts[0]] == sorted(f"v{i}.h5" for i in order[:8])
    assert split_by_subject(list(reversed(files)), [""] * 10, (0.8, 0.1, 0.1)) == parts  # order-independent
    assert split_by_subject(files, [""] * 10, (0.8, 0.1, 0.1), salt="other") != parts


# ---------------------------------------------------------------------------------------------- stopping check


def test_study_option_defaults_and_errors():
    from mrlearn.study.spec import study_from_dict

    base = {"base": "unet_demo"}
    assert study_from_dict({**base, "budget": "to_convergence"}, "s").stopping_check["factor"] == 2
    assert study_from_dict({**base, "budget": "equal_steps"}, "s").stopping_check is None
    assert study_from_dict({**base, "budget": "to_convergence", "stopping_check": None}, "s").stopping_check is None
    assert study_from_dict({**base, "stopping_check": {"factor": 3}}, "s").stopping_check["factor"] == 3
    assert study_from_dict({**base, "stopping_check": {"warm_start": True}}, "s").stopping_check["warm_start"] is True
    for bad in ({"factor": 1}, {"seeds": 0}, {"tolerance_db": -1}, {"patience": 2}, "yes", {"warm_start": "yes"}):
        with pytest.raises(MrlearnError) as exc:
            study_from_dict({**base, "stopping_check": bad}, "s")
        assert "stopping_check" in str(exc.value) and "\n" not in str(exc.value)


def test_check_scales_every_patience_and_cap_but_not_the_decay(tmp_path):
    from mrlearn.study import load_study, run_config
    from mrlearn.study.stopping_check import check_runs

    spec = load_study("layerwise_study", ["seeds=[0, 1, 2]"])
    runs = spec.runs()
    configs = {r.run_id: run_config(spec, r, tmp_path / r.run_id) for r in runs}
    checks = check_runs(spec, runs, configs)
    assert checks and all(c.run_id.endswith("__check") and c.seed == 0 for c in checks)
    greedy = next(c for c in checks if c.arm.startswith("greedy"))
    orig = configs[greedy.run_id.removesuffix("__check")]
    cfg = run_config(spec, greedy, tmp_path / greedy.run_id)
    assert cfg.method["block_patience"] == 2 * orig.method["block_patience"]
    assert cfg.method["epochs_per_block"] == 2 * orig.method["epochs_per_block"]
    assert cfg.trainer.max_epochs == 2 * orig.trainer.max_epochs and cfg.method["lr_step_epochs"] == orig.method["lr_step_epochs"]
    spec = load_study("ssl_vs_supervised", ["trainer.early_stopping.lr_patience=2"])
    runs = spec.runs()
    configs = {r.run_id: run_config(spec, r, tmp_path / r.run_id) for r in runs}
    for c in check_runs(spec, runs, configs):
        new, old = run_config(spec, c, tmp_path / c.run_id).trainer, configs[c.run_id.removesuffix("__check")].trainer
        window = "patience_samples" if old.early_stopping.patience_samples is not None else "patience"
        assert getattr(new.early_stopping, window) == 2 * getattr(old.early_stopping, window)
        assert new.max_steps == 2 * old.max_steps
        assert new.early_stopping.lr_patience == old.early_stopping.lr_patience == 2
    assert {configs[r.run_id].method["name"] for r in runs} >= {"reference"}  # reference rows are never checked
    assert not any(configs[c.run_id.removesuffix("__check")].method["name"] == "reference"
                   for c in check_runs(spec, runs, configs))


def test_tolerance_uses_the_comparison_interval(tmp_path):
    from mrlearn.study.spec import RunSpec, StudySpec
    from mrlearn.study.stopping_check import DEFAULTS, stopping_table

    spec = StudySpec(name="s", base={}, seeds=[0], arms={"a": {}, "b": {}}, summary={"baseline": "a"},
                     stopping_check=dict(DEFAULTS))
    runs = [RunSpec(f"{arm}__seed0", arm, {}, 0, {}) for arm in ("a", "b")]
    for rid, psnr in (("a__seed0", 30.0), ("a__seed0__check", 30.3), ("b__seed0", 31.0), ("b__seed0__check", 31.6)):
        (tmp_path / "runs" / rid).mkdir(parents=True)
        (tmp_path / "runs" / rid / "result.json").write_text(json.dumps(
            {"status": "finished", "groups": {"all": {"psnr": psnr}}}))
    rows = [{"run_id": r.run_id, "arm": r.arm, "group": "all"} for r in runs]
    table = stopping_table(spec, tmp_path, runs, rows, lambda: [
        {"arm": "b", "point": "-", "group": "all", "ci95_low": -1.0, "ci95_high": 1.0}])  # width 2: tolerance 0.5
    got = {t["arm"]: t for t in table}
    assert got["a"]["difference"] == pytest.approx(0.3) and got["a"]["tolerance"] == pytest.approx(0.5)
    assert got["b"]["difference"] == pytest.approx(0.6) and got["b"]["sensitive"] == "yes" and got["a"]["sensitive"] == "no"
    assert [r["stopping_sensitive"] for r in rows] == [False, True]


def test_tolerance_finds_the_interval_of_a_grid_point_given_as_a_mapping(tmp_path):
    """A grid value that is a mapping (e.g. a mask) labels the check's point and the comparison's point alike,
    whatever the order of its keys, so the tolerance is a quarter of that comparison's interval, not the floor."""
    from mrlearn.study.compare import point_key, point_label
    from mrlearn.study.spec import RunSpec, StudySpec
    from mrlearn.study.stopping_check import DEFAULTS, stopping_table

    point = {"mask": {"name": "random", "accelerations": [4], "center_fractions": [0.08]}}
    spec = StudySpec(name="s", base={}, seeds=[0], arms={"a": {}, "b": {}}, summary={"baseline": "a"},
                     stopping_check=dict(DEFAULTS))
    runs = [RunSpec(f"{arm}__seed0", arm, point, 0, {}) for arm in ("a", "b")]
    for rid, psnr in (("a__seed0", 30.0), ("a__seed0__check", 30.0), ("b__seed0", 31.0), ("b__seed0__check", 31.3)):
        (tmp_path / "runs" / rid).mkdir(parents=True)
        (tmp_path / "runs" / rid / "result.json").write_text(json.dumps(
            {"status": "finished", "groups": {"all": {"psnr": psnr}}}))
    rows = [{"run_id": r.run_id, "arm": r.arm, "group": "all"} for r in runs]
    label = point_label({k: json.loads(v) for k, v in point_key(point)})  # as the comparisons label it
    table = stopping_table(spec, tmp_path, runs, rows, lambda: [
        {"arm": "b", "point": label, "group": "all", "ci95_low": 0.0, "ci95_high": 2.0}])  # width 2: tolerance 0.5
    got = {t["arm"]: t for t in table}
    assert got["b"]["interval_width"] == pytest.approx(2.0) and got["b"]["tolerance"] == pytest.approx(0.5)
    assert got["b"]["sensitive"] == "no" and [r["stopping_sensitive"] for r in rows] == [False, False]


def test_study_runs_the_check_and_marks_a_sensitive_arm(data, tmp_path, monkeypatch):
    import mrlearn.study.runner as study_runner
    from mrlearn.study import load_study, run_study

    real = study_runner.get_runner

    def shifted(name, cfg):  # the check runs train for real; their PSNR is then raised by 5 dB
        fn = real(name, cfg)

        def run(c):
            outcome = fn(c)
            if c.name.endswith("__check"):
                outcome.groups = {g: {**m, "psnr": m["psnr"] + 5.0} for g, m in outcome.groups.items()}
            return outcome
        return run

    monkeypatch.setattr(study_runner, "get_runner", shifted)
    torch.set_num_threads(1)
    sets = [f"data.root={data}", "seeds=[0]", "arms=[zero_filled, supervised]", "trainer.max_steps=4",
            "trainer.val_every_n_steps=2", "data.contrasts=null"]
    out = tmp_path / "study"
    lines: list[str] = []
    run_study(load_study("ssl_vs_supervised_tiny", sets), out, log=lines.append)
    checks = sorted(p.name for p in (out / "runs").glob("*__check"))
    assert len(checks) == 1 and checks[0].startswith("supervised__")  # the reference row is not rerun
    cfg = load_config(out / "runs" / checks[0] / "config.yaml")
    assert cfg.trainer.max_steps == 8 and cfg.trainer.early_stopping.patience == 4
    original = json.loads((out / "runs" / checks[0].removesuffix("__check") / "result.json").read_text())
    check = json.loads((out / "runs" / checks[0] / "result.json").read_text())
    with open(out / "study.csv", newline="") as fh:
        rows = {r["arm"]: r for r in csv.DictReader(fh)}
    assert rows["supervised"]["stopping_sensitive"] == "True" and rows["zero_filled"]["stopping_sensitive"] == ""
    html = (out / "report.html").read_text()
    assert "Stopping check" in html and "stopping-sensitive: supervised" in html
    with open(out / "stopping_check.csv", newline="") as fh:
        (entry,) = list(csv.DictReader(fh))
    diff = check["groups"]["all"]["psnr"] - original["groups"]["all"]["psnr"]
    assert float(entry["difference"]) == pytest.approx(diff) and diff > 4  # a real rerun, then the forced +5 dB
    assert entry["arm"] == "supervised" and entry["sensitive"] == "yes" and float(entry["tolerance"]) >= 0.1
    assert any("stopping check: 1 run(s)" in line for line in lines)
    lines.clear()  # a rerun resumes: every run, the check included, is finished
    run_study(load_study("ssl_vs_supervised_tiny", sets), out, log=lines.append)
    assert sum("finished before, skipped" in line for line in lines) == 3
    import shutil

    copy = tmp_path / "committed"  # the committed rows alone (no run folders): the same table, read back
    copy.mkdir()
    for name in ("study.csv", "cells.csv", "stopping_check.csv", "study.yaml"):
        shutil.copy(out / name, copy / name)
    run_study(load_study("ssl_vs_supervised_tiny", sets), copy, only_summary=True, log=lambda s: None)
    assert (copy / "stopping_check.csv").read_bytes() == (out / "stopping_check.csv").read_bytes()
    again = (copy / "report.html").read_text()
    assert "stopping-sensitive: supervised" in again and "Read from stopping_check.csv" in again


@pytest.mark.parametrize("executor, calls", [("sequential", [["main", "main"], ["check"]]),
                                             ("local", [["check", "main", "main"]])])
def test_parallel_executors_queue_the_check_runs_first(data, tmp_path, monkeypatch, executor, calls):
    """The check runs are the longest: a parallel executor takes them first, in one queue with the study's runs."""
    import mrlearn.study.runner as study_runner
    from mrlearn.study import load_study, run_study

    seen: list[list[str]] = []

    def record(spec, runs, *args, **kwargs):
        seen.append(["check" if r.run_id.endswith("__check") else "main" for r in runs])

    monkeypatch.setattr(study_runner, "run_jobs", record)
    monkeypatch.setattr("mrlearn.study.summary.write_summary", lambda *a, **k: None)
    sets = [f"data.root={data}", "seeds=[0]", "arms=[zero_filled, supervised]", "trainer.max_steps=4",
            "trainer.val_every_n_steps=2", "data.contrasts=null"]
    lines: list[str] = []
    run_study(load_study("ssl_vs_supervised_tiny", sets), tmp_path / "s", log=lines.append, executor=executor)
    assert seen == calls  # the zero-filled reference row is a main run and has no check
    assert any("stopping check: 1 run(s)" in line for line in lines)


def test_a_warm_check_waits_for_its_run_and_other_runs_go_first():
    from types import SimpleNamespace

    from mrlearn.study.executors import next_ready

    def job(rid, after=None):
        return SimpleNamespace(run=SimpleNamespace(run_id=rid), after=after)

    a, check, b = job("a"), job("a__check", "a"), job("b")
    assert next_ready([a, check, b], []) == 0
    assert next_ready([check, b], [a]) == 1  # its run is still running: the next run goes first
    assert next_ready([check], [a]) is None  # nothing else to do: wait for it
    assert next_ready([check], [b]) == 0 and next_ready([check], []) == 0  # its run ended (or is not queued here)


def test_a_check_is_seeded_only_from_a_finished_run_that_kept_its_stop(tmp_path):
    from mrlearn.study.resume import WARM
    from mrlearn.study.stopping_check import seed_from_stop

    cfg = load_config("unet_demo", [f"out_dir={tmp_path / 'x'}"])
    run = tmp_path / "runs" / "a__seed0"
    (run / "task_pd" / "checkpoints" / "at_stop").mkdir(parents=True)
    assert not seed_from_stop(tmp_path, "a__seed0__check", cfg)  # not finished
    (run / "result.json").write_text(json.dumps({"status": "finished"}))
    for name in ("state.ckpt", "best.ckpt"):
        (run / "task_pd" / "checkpoints" / "at_stop" / name).write_text(name)
    check = tmp_path / "runs" / "a__seed0__check"
    check.mkdir()
    (check / ".study.lock").write_text("")
    assert seed_from_stop(tmp_path, "a__seed0__check", cfg, keep=".study.lock")
    assert (check / "task_pd" / "checkpoints" / "last.ckpt").read_text() == "state.ckpt"
    assert (check / "task_pd" / "checkpoints" / "best.ckpt").read_text() == "best.ckpt"
    assert json.loads((check / "run.json").read_text())["status"] == WARM
    assert not seed_from_stop(tmp_path, "a__seed0__check", cfg, keep=".study.lock")  # never over a started folder
    older = tmp_path / "runs" / "b__seed0"
    older.mkdir()
    (older / "result.json").write_text(json.dumps({"status": "finished"}))
    assert not seed_from_stop(tmp_path, "b__seed0__check", cfg)  # finished by an older version: no at_stop
