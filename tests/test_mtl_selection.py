"""Per-task model selection of multi-task runs: each task's own best checkpoint and stopping rule (synthetic series
through the callback; tiny real runs: files, re-scoring, kill/resume, pooled and transfer baselines, study.csv)."""

from __future__ import annotations

import csv
import json
import pathlib
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from helpers_training import run_python
from mrlearn.engine.convergence import Convergence
from mrlearn.engine.task_selection import TaskSelection
from mrlearn.errors import MrlearnError

torch.set_num_threads(1)

# pd peaks early and falls; scarce keeps rising slowly until index 7: their mean (the joint metric) peaks at 2
PD = [30.0, 32.0, 34.0, 33.0, 32.0, 31.0, 40.0, 29.0, 28.0, 27.0, 26.0]
SCARCE = [20.0, 20.5, 21.0, 21.3, 21.5, 21.6, 21.7, 21.75, 21.7, 21.6, 21.5]


class FakeTrainer:
    """What the callback reads of a Lightning trainer, one validation at a time."""

    def __init__(self) -> None:
        self.sanity_checking, self.state = False, SimpleNamespace(fn="fit")
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.global_step = self.current_epoch = 0
        self.should_stop = False
        self.callbacks: list = []
        self.optimizers = [torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)]

    @property
    def lr(self) -> float:
        return self.optimizers[0].param_groups[0]["lr"]


class FakeModule:
    def __init__(self) -> None:
        self.seen = {"pd": 0, "scarce": 0}

    def samples_per_task(self) -> dict[str, int]:
        return dict(self.seen)


def _validate(sel: Convergence, trainer: FakeTrainer, module: FakeModule, i: int) -> None:
    trainer.global_step, trainer.current_epoch = 3 * (i + 1), i
    module.seen = {"pd": 4 * (i + 1), "scarce": i + 1}  # 4 pd samples and 1 scarce sample per epoch
    trainer.callback_metrics = {"val_psnr": torch.tensor((PD[i] + SCARCE[i]) / 2),
                                "val_psnr/pd": torch.tensor(PD[i]), "val_psnr/scarce": torch.tensor(SCARCE[i])}
    sel.on_validation_end(trainer, module)


def _selection(**rule) -> TaskSelection:
    return TaskSelection(Convergence("val_psnr", "max", **rule), {"pd": "val_psnr/pd", "scarce": "val_psnr/scarce"})


def test_joint_metric_peaks_before_the_scarce_task_and_each_task_keeps_its_own_best():
    joint, trainer, module = Convergence("val_psnr", "max", patience=2), FakeTrainer(), FakeModule()
    for i in range(len(PD)):  # what selecting on the mean did
        if not trainer.should_stop:
            _validate(joint, trainer, module, i)
    assert joint.best_entry()[0] == 9 and joint.series[-1][0] == 15  # best at step 9 (index 2), stopped at 15
    sel, trainer, module = _selection(patience=2), FakeTrainer(), FakeModule()
    for i in range(len(PD)):
        if not trainer.should_stop:
            _validate(sel, trainer, module, i)
    assert len(sel.series) == 10 and sel.best_entry()[0] == 21  # the joint series is still recorded (pd's spike)
    rec = sel.task_records("max_steps")
    assert (rec["pd"]["best_step"], rec["scarce"]["best_step"]) == (9, 24)  # indices 2 and 7: different checkpoints
    assert rec["scarce"]["samples_at_best"] == 8 and rec["pd"]["samples_at_best"] == 12
    # pd's rule fired at index 4 (two validations without improvement); its later 40 dB spike is not selected
    assert rec["pd"]["stopped_by"] == "early_stopping" and rec["pd"]["stop_step"] == 15 and rec["pd"]["converged"]
    assert rec["pd"]["best_score"] == 34.0 and sel.after["pd"][1][2] == 40.0
    # the run went on until the scarce task's rule fired (index 9), not at pd's stop nor the joint one
    assert trainer.should_stop and sel.stopped_early and rec["scarce"]["stop_step"] == 30
    assert rec["scarce"]["stopped_by"] == "early_stopping" and rec["scarce"]["stop_samples"] == 10
    assert [p[0] for p in sel.task_curve("pd")] == [3 * (i + 1) for i in range(10)]  # the curve goes on after the stop


def test_shared_learning_rate_is_cut_only_when_every_running_task_asks():
    sel, trainer, module = _selection(patience=2, lr_patience=1, max_lr_cuts=1), FakeTrainer(), FakeModule()
    lrs = []
    for i in range(len(PD)):
        _validate(sel, trainer, module, i)
        lrs.append(trainer.lr)
    # pd asks from index 3 on while scarce improves; scarce first fails to improve at index 8: both ask, one cut
    assert lrs == [1.0] * 8 + [0.5] * 3 and sel.lr_reductions == 1
    rec = sel.task_records("max_steps")
    # after the cut each task waits a full window (2 validations) at the final rate: index 10 for both
    assert rec["pd"]["stop_step"] == rec["scarce"]["stop_step"] == 33 and trainer.should_stop
    # pd was still running (waiting for the cut) at its index-6 spike, so this time the spike is its best
    assert rec["pd"]["best_step"] == 21 and rec["scarce"]["best_step"] == 24


def test_selection_state_survives_a_checkpoint_round_trip():
    a, trainer, module = _selection(patience=2, lr_patience=1), FakeTrainer(), FakeModule()
    for i in range(5):
        _validate(a, trainer, module, i)
    state = torch.load(_saved(a.state_dict()), weights_only=True)  # as it travels in last.ckpt
    b = _selection(patience=2, lr_patience=1)
    b.load_state_dict(state)
    t2, m2 = FakeTrainer(), FakeModule()
    t2.optimizers[0].param_groups[0]["lr"] = trainer.lr
    for i in range(5, len(PD)):
        _validate(a, trainer, module, i)
        _validate(b, t2, m2, i)
    assert a.task_records("max_steps") == b.task_records("max_steps") and a.state_dict() == b.state_dict()
    assert trainer.lr == t2.lr and trainer.should_stop == t2.should_stop


def _saved(state) -> "io.BytesIO":
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_a_task_metric_the_method_does_not_log_is_one_line():
    sel = TaskSelection(Convergence("val_psnr", "max", patience=2), {"pd": "val_psnr/pd", "t2": "val_psnr/t2"})
    trainer = FakeTrainer()
    trainer.callback_metrics = {"val_psnr": torch.tensor(1.0), "val_psnr/pd": torch.tensor(1.0)}
    with pytest.raises(MrlearnError, match=r"'val_psnr/t2' \(task t2\) is not logged by this method"):
        sel.on_validation_end(trainer, FakeModule())
    with pytest.raises(MrlearnError, match="cannot name a checkpoint file"):
        TaskSelection(Convergence("val_psnr", "max"), {"a/b": "val_psnr/a/b"})


# ---------------------------------------------------------------------------------------------- tiny real runs
TINY = ["trainer.max_epochs=100", "trainer.val_every=1", "model.cascades=2", "model.chans=4", "model.split=1",
        "data.batch_size=2", "trainer.log_every_n_steps=1", "tasks.weighting=equal", "optim.lr=0.003",
        "trainer.early_stopping={monitor: val_psnr, patience: 2, lr_patience: 1, max_lr_cuts: 1}"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    opts = SimulationOptions(anatomy="phantom", matrix=(32, 32), slices=2, subjects=(2, 1, 1), contrasts=("PD", "T2"),
                             coils=2)
    return Path(simulate_dataset(tmp_path_factory.mktemp("mtlsel") / "data", opts))


def _cfg(data: Path, out: Path, *extra: str):
    from mrlearn.config import load_config

    return load_config("mtl_tiny", [f"data.root={data}", *TINY, "trainer.max_steps=24", f"out_dir={out}", *extra])


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    from mrlearn.mtl.train import train_mtl

    out = tmp_path_factory.mktemp("mtlsel_runs") / "uninterrupted"
    cfg = _cfg(data, out)
    return cfg, train_mtl(cfg), json.loads((out / "metrics.json").read_text())


def test_tiny_run_scores_each_task_with_its_own_checkpoint(reference):
    from mrlearn.engine.checkpoint import load_checkpoint, load_weights
    from mrlearn.mtl.train import evaluate
    from mrlearn.training.runner import build_method

    cfg, outcome, metrics = reference
    sel = metrics["task_selection"]
    assert set(sel) == {"pd", "scarce"} and metrics["selected"] == "best"
    module = build_method(cfg, init=False)
    dm = module.make_datamodule(cfg)
    for t, name in enumerate(["pd", "scarce"]):
        path = Path(cfg.run_dir()) / "checkpoints" / f"best_{name}.ckpt"
        assert sel[name]["checkpoint"] == str(path.absolute()) and sel[name]["monitor"] == f"val_psnr/{name}"
        ckpt = load_checkpoint(path)
        assert ckpt["global_step"] == sel[name]["best_step"]
        entry = next(h for h in metrics["history"] if h.get("step") == sel[name]["best_step"])
        assert sel[name]["best_score"] == pytest.approx(entry[f"val_psnr/{name}"])  # its own validation maximum
        assert sel[name]["samples_at_best"] == entry[f"samples/{name}"]
        assert sel[name]["best_score"] == pytest.approx(max(h[f"val_psnr/{name}"] for h in metrics["history"]
                                                            if h.get("step", 1e9) <= sel[name]["stop_step"]))
        load_weights(module, ckpt["state_dict"], path)
        again = evaluate(module, dm, "test", 0, only={t})
        assert again.groups[name] == outcome.groups[name] == metrics["tasks"][name]  # re-scored: the same numbers
    assert not list(Path(cfg.run_dir()).rglob("*.tmp"))


KILL = textwrap.dedent("""
    import os, signal, sys
    import lightning as L
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[1])
    import test_mtl_selection as T
    import mrlearn.mtl.train as train

    class KillAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == int(sys.argv[4]):
                os.kill(os.getpid(), signal.SIGKILL)

    make = train.make_trainer
    train.make_trainer = lambda cfg, run_dir, callbacks=(), **kw: make(cfg, run_dir, [*callbacks, KillAt()], **kw)
    train.train_mtl(T._cfg(T.Path(sys.argv[2]), T.Path(sys.argv[3]), sys.argv[5]))
""")


def _without_paths(sel: dict) -> dict:
    return {t: {k: v for k, v in r.items() if k != "checkpoint"} for t, r in sel.items()}


# 3 batches per epoch: killed at step 14 with checkpoints at validations/epoch ends -> resumes from step 12 (end of
# epoch 3); killed at step 17 with a checkpoint every 2 steps -> resumes mid-epoch from step 16
@pytest.mark.parametrize("kill_at, every, resume_step", [(14, 0, 12), (17, 2, 16)])
def test_sigkill_then_resume_restores_every_task_state(reference, data, tmp_path, kill_at, every, resume_step):
    from mrlearn.engine.checkpoint import load_checkpoint
    from mrlearn.mtl.train import study_runner

    cfg, outcome, metrics = reference
    out = tmp_path / "killed"
    every_set = f"trainer.checkpoint_every_n_steps={every}"
    proc = run_python(f"import sys; sys.argv = ['x', {str(pathlib.Path(__file__).parent)!r}, {str(data)!r}, "
                      f"{str(out)!r}, '{kill_at}', {every_set!r}]\n" + KILL)
    assert proc.returncode == -9, proc.stderr[-2000:]
    last = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert last["global_step"] == resume_step
    state = last["callbacks"]["TaskSelection"]["tasks"]
    if resume_step == 12:
        # bests at steps 9 (pd) and 6 (scarce); scarce asked for a cut at step 9 (refused: pd improved), both at 12:
        # one cut, which restarted both windows (anchors at the 4th validation, with each task's own samples)
        assert len(state["pd"]["convergence"]["series"]) == 4 and last["callbacks"]["TaskSelection"]["cuts"] == 1
        assert state["pd"]["best"]["step"] == 9 and state["scarce"]["best"]["step"] == 6
        assert state["pd"]["convergence"]["plateau"]["anchor"] == [3, 16]
        assert state["scarce"]["convergence"]["plateau"]["anchor"] == [3, 4]
    resumed = study_runner(_cfg(data, out, every_set), resume=True)  # as a study resumes an unfinished run
    again = json.loads((out / "metrics.json").read_text())
    assert _without_paths(again["task_selection"]) == _without_paths(metrics["task_selection"])
    assert again["history"] == metrics["history"] and resumed.groups == outcome.groups
    for name in ("best_pd", "best_scarce", "last"):
        a = load_checkpoint(Path(cfg.run_dir()) / "checkpoints" / f"{name}.ckpt")["state_dict"]
        b = load_checkpoint(out / "checkpoints" / f"{name}.ckpt")["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((out / "run.json").read_text())["attempts"] == 2


def test_pooled_and_transfer_select_per_task_and_study_csv_shows_it(tmp_path, data):
    from mrlearn.study import load_study, run_study
    from mrlearn.study.summary import _task_curves

    arms = {"mtl": {"model.sharing": "early"},
            "pooled": {"tasks.pooled": True, "model.num_tasks": 1, "model.sharing": "all"},
            "transfer": {"tasks.transfer": {"pretrain_fraction": 0.5, "phase_caps": "each"}, "model.num_tasks": 1,
                         "model.sharing": "all"},
            "stl": {"tasks.separate": True, "model.sharing": "all"}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "sel", "base": "mtl_tiny", "seeds": [0], "arms": arms,
                                    "set": [f"data.root={data}", *TINY, "trainer.max_steps=12"],
                                    "summary": {"scarce_task": "scarce"}}, sort_keys=False))
    spec = load_study(path)
    out = run_study(spec, tmp_path / "out", log=lambda s: None)
    m = {arm: json.loads((out / "runs" / f"{arm}__seed0" / "metrics.json").read_text()) for arm in arms}
    pooled = m["pooled"]["task_selection"]
    assert {r["monitor"] for r in pooled.values()} == {"val_psnr/pd", "val_psnr/scarce"}
    for name in ("pd", "scarce"):
        assert (out / "runs" / "pooled__seed0" / "checkpoints" / f"best_{name}.ckpt").is_file()
        assert not (out / "runs" / "stl__seed0" / f"task_{name}" / "checkpoints" / f"best_{name}.ckpt").exists()
    # transfer: the fine-tuning phase selects on the scarce task; its steps count after the pretraining steps
    tr = m["transfer"]
    pre, fine = tr["phases"]["pretrain"], tr["phases"]["finetune"]
    assert tr["task_selection"]["scarce"]["best_step"] == pre["steps"] + fine["best_step"]
    assert min(h["step"] for h in tr["history"] if "step" in h) > pre["steps"]
    assert m["stl"]["task_selection"]["scarce"]["best_step"] == m["stl"]["per_task_runs"]["scarce"]["best_step"]
    rows = {(r["arm"], r["group"]): r for r in csv.DictReader(open(out / "study.csv"))}
    for arm in ("mtl", "pooled", "stl"):
        for name in ("pd", "scarce"):
            own = m[arm]["task_selection"][name]
            row = rows[(arm, name)]
            assert int(row["best_step"]) == own["best_step"] and int(row["samples_at_best"]) == own["samples_at_best"]
            assert row["stopped_by"] == own["stopped_by"] and row["converged"] == str(own["converged"])
    assert int(rows[("transfer", "scarce")]["best_step"]) == tr["task_selection"]["scarce"]["best_step"]
    # the report's scarce-task figure marks each run's own selection of that task
    curves, marks = _task_curves(out, spec.runs(), "scarce")
    for arm in arms:
        own = m[arm]["task_selection"]["scarce"]
        assert marks[arm] == [(own["best_step"], own["stop_step"])]
    assert (out / "report.html").stat().st_size > 1000


def test_a_monitor_not_logged_per_task_is_one_line(tmp_path, data):
    from mrlearn.mtl.train import train_mtl

    with pytest.raises(MrlearnError, match=r"trainer.early_stopping.monitor: 'val_loss' is not logged per task"):
        train_mtl(_cfg(data, tmp_path / "r", "trainer.early_stopping={monitor: val_loss, patience: 2}"))


def test_a_warm_stopping_check_scores_as_one_run_from_step_0(tmp_path, data):
    """``stopping_check.warm_start``: each check continues its run from ``checkpoints/at_stop`` (multi-task,
    single-task and transfer fits) and ends where a check from step 0 ends, with the same scores."""
    import shutil

    from mrlearn.study import load_study, run_study

    arms = {"mtl": {"model.sharing": "early"},
            "transfer": {"tasks.transfer": {"pretrain_fraction": 0.5, "phase_caps": "each"}, "model.num_tasks": 1,
                         "model.sharing": "all"},
            "stl": {"tasks.separate": True, "model.sharing": "all"}}

    def study(name: str, warm: bool):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": "warm", "base": "mtl_tiny", "seeds": [0], "arms": arms,
                                        "budget": "to_convergence", "stopping_check": {"warm_start": warm},
                                        "set": [f"data.root={data}", *TINY, "trainer.max_steps=40"],
                                        "summary": {"scarce_task": "scarce"}}, sort_keys=False))
        return load_study(path)

    lines: list[str] = []
    warm = run_study(study("warm", True), tmp_path / "warm", log=lines.append)
    assert any("3 run(s) with every patience and cap x2, each continuing its run" in line for line in lines)
    cold = tmp_path / "cold" / "runs"
    cold.mkdir(parents=True)
    for arm in arms:  # the same finished runs; only the checks run again, from step 0
        shutil.copytree(warm / "runs" / f"{arm}__seed0", cold / f"{arm}__seed0")
    run_study(study("cold", False), tmp_path / "cold", log=lambda s: None)
    stopped_early = 0
    for arm in arms:
        run = json.loads((warm / "runs" / f"{arm}__seed0" / "metrics.json").read_text())
        hot = json.loads((warm / "runs" / f"{arm}__seed0__check" / "result.json").read_text())
        ref = json.loads((cold / f"{arm}__seed0__check" / "result.json").read_text())
        assert hot["extra"]["resumed_from"]["forked_from"] == f"{arm}__seed0" and "resumed_from" not in ref["extra"]
        assert hot["extra"]["steps"] == ref["extra"]["steps"] > run["steps"]  # it trained on past the run's stop
        for group, metrics in ref["groups"].items():
            assert hot["groups"][group]["psnr"] == pytest.approx(metrics["psnr"], abs=1e-4)
        stopped_early += any(t["stopped_by"] == "early_stopping" for t in run["task_selection"].values())
    assert stopped_early >= 2  # the check reopened rules that had fired, not only runs ended by the cap
