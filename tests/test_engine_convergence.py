"""Convergence bookkeeping of the engine: validation every N steps, early stopping, caps, best-checkpoint evaluation,
and the `converged` flag (a run stopped by a cap while still improving is not converged; one that stops early is)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from helpers_training import tiny_config, tiny_dataset
from mrlearn.engine.convergence import Convergence, convergence_record, default_mode, improved
from mrlearn.training.runner import train


def fake_trainer(step: int, epoch: int, value: float) -> SimpleNamespace:
    import torch

    return SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="fit"), global_step=step, current_epoch=epoch,
                           callback_metrics={"val_ssim": torch.tensor(value)}, should_stop=False, optimizers=[])


def feed(cb: Convergence, values: list[float]) -> SimpleNamespace:
    trainer = None
    for i, v in enumerate(values):
        trainer = fake_trainer(10 * (i + 1), i, v)
        cb.on_validation_end(trainer, None)
        if trainer.should_stop:
            break
    return trainer


@pytest.mark.parametrize("values, patience, stops, improving", [
    ([0.1, 0.2, 0.3, 0.4], 2, False, True),          # rising to the end: still improving
    ([0.1, 0.5, 0.5, 0.5], 2, True, False),          # plateau for `patience` validations: early stop
    ([0.1, 0.5, 0.4, 0.45, 0.5], 3, True, False),    # equal to the best is no improvement
    ([0.1, 0.5, 0.4, 0.51], 2, False, True),         # a late improvement restarts the window
    ([0.3, 0.2, 0.1], None, False, False),            # no patience: the last validation is the window
    ([0.1, 0.2], None, False, True),
])
def test_convergence_window(values, patience, stops, improving):
    cb = Convergence("val_ssim", "max", patience=patience)
    trainer = feed(cb, values)
    assert cb.stopped_early is stops and trainer.should_stop is stops
    assert cb.still_improving() is improving


@pytest.mark.parametrize("lr_patience", [None, 1])
def test_a_longer_window_reopens_a_rule_that_fired_and_the_same_window_keeps_it_stopped(lr_patience):
    cuts = {} if lr_patience is None else {"lr_patience": 1, "max_lr_cuts": 1}
    cb = Convergence("val_ssim", "max", patience=2, **cuts)
    values = [0.1, 0.5, 0.5, 0.5] + ([0.5] if lr_patience else [])  # with a cut: one more validation before the window
    feed(cb, values)
    assert cb.stopped_early and cb.plateau.window_used() and cb.has_stopped()
    same, longer = Convergence("val_ssim", "max", patience=2, **cuts), Convergence("val_ssim", "max", patience=4, **cuts)
    same.load_state_dict(cb.state_dict())
    longer.load_state_dict(cb.state_dict())
    assert same.stopped_early and not longer.stopped_early and not longer.plateau.window_used()
    trainer = fake_trainer(100, 9, 0.5)
    longer.on_validation_end(trainer, None)  # 3 validations since the anchor (improvement or cut): not yet 4
    assert not trainer.should_stop
    trainer = fake_trainer(110, 10, 0.5)
    longer.on_validation_end(trainer, None)
    assert trainer.should_stop and longer.stopped_early


def test_min_delta_and_modes():
    assert improved(0.52, 0.5, "max", 0.01) and not improved(0.505, 0.5, "max", 0.01)
    assert improved(0.48, 0.5, "min", 0.01) and not improved(float("nan"), 0.5, "max")
    assert default_mode("val_loss") == "min" and default_mode("val_nmse") == "min" and default_mode("val_ssim") == "max"
    cb = Convergence("val_ssim", "max", patience=2, min_delta=0.05)
    feed(cb, [0.1, 0.12, 0.13])  # improvements smaller than min_delta count as none
    assert cb.stopped_early and cb.best_entry()[2] == pytest.approx(0.13)  # best.ckpt still follows the best value


def test_relative_min_delta_and_reduce_on_plateau():
    assert improved(0.98, 1.0, "min", 0.01, relative=True) and not improved(0.995, 1.0, "min", 0.01, relative=True)
    assert not improved(9.95e-3, 1e-2, "min", 0.01, relative=True)  # the same fraction at another loss scale
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    cb = Convergence("val_loss", "min", patience=5, lr_patience=2, lr_factor=0.5, min_delta=1e-3, relative=True)
    lrs = []
    for i, value in enumerate([1.0, 0.5, 0.4999, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]):
        trainer = fake_trainer(10 * (i + 1), i, 0.0)
        trainer.callback_metrics = {"val_loss": torch.tensor(value)}
        trainer.optimizers = [optimizer]
        cb.on_validation_end(trainer, None)
        lrs.append(optimizer.param_groups[0]["lr"])
        if trainer.should_stop:
            break
    # halved after each 2 validations without a 0.1 % gain (the gain to 0.3 restarts the count), at most
    # (5 - 1) // 2 = 2 cuts; each cut restarts the window: stop 5 validations after the last cut (index 6 -> 11)
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]
    assert cb.stopped_early and cb.lr_reductions == 2 and cb.state_dict()["lr_reductions"] == 2
    with pytest.raises(ValueError):
        Convergence("val_loss", "min", lr_patience=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("conv") / "data")


def step_of(path) -> int:
    import torch

    return int(torch.load(path, weights_only=True)["global_step"])


def metrics(run_dir) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_step_cap_while_improving_is_not_converged(data, tmp_path):
    out = tmp_path / "cap"
    result = train(tiny_config(data, out, "trainer.max_steps=8", "trainer.val_every_n_steps=2", "trainer.max_epochs=5",
                               "optim.lr=3e-4"))
    m = metrics(out)
    assert [v["step"] for v in m["validation_curve"]] == [2, 4, 6, 8]
    assert m["steps"] == 8 and m["stopped_by"] == "max_steps"
    values = [v["val_ssim"] for v in m["validation_curve"]]
    still_rising = values.index(max(values)) == len(values) - 1
    assert m["converged"] is (not still_rising) and still_rising, values  # this tiny run is still learning at step 8
    assert m["best_step"] == 8 and m["evaluated"]["step"] == 8 and result.convergence["converged"] is False
    assert json.loads((out / "run.json").read_text())["stopped_by"] == "max_steps"
    assert step_of(out / "checkpoints" / "at_stop" / "state.ckpt") == 8  # no rule fired: kept at the cap


def test_early_stopping_is_converged_and_evaluates_the_best_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "early"
    # lr 0: the first validation is the best, later ones only equal it -> stop after `patience` of them
    train(tiny_config(data, out, "optim.lr=0.0", "trainer.val_every_n_steps=2", "trainer.max_epochs=10",
                      "trainer.early_stopping={patience: 2}", "trainer.progress_bar=true",
                      "trainer.progress_every=1e-9"))
    m = metrics(out)
    assert m["stopped_by"] == "early_stopping" and m["converged"] is True
    assert m["steps"] == 6 and m["best_step"] == 2 and m["validations"] == 3
    kept = out / "checkpoints" / "at_stop"  # the run where its rule fired, with its best checkpoint of then
    assert step_of(kept / "state.ckpt") == 6 and step_of(kept / "best.ckpt") == 2
    assert m["evaluated"] == {"weights": "best", "checkpoint": str(out / "checkpoints" / "best.ckpt"), "step": 2}
    assert m["final"]["val_ssim"] == pytest.approx(m["validation_curve"][0]["val_ssim"])
    err = capsys.readouterr().err  # not a terminal: clean progress lines, no carriage returns
    assert "\r" not in err and "training: finished, step 6/" in err and "val_ssim" in err
    again = train(tiny_config(data, out, "optim.lr=0.0", "trainer.val_every_n_steps=2", "trainer.max_epochs=10",
                              "trainer.early_stopping={patience: 2}"), resume=True)
    assert again.convergence["steps"] == 6 and again.convergence["stopped_by"] == "early_stopping"


def test_reduce_on_plateau_cuts_the_trained_optimizers_rate_and_survives_resume(data, tmp_path):
    import torch

    out = tmp_path / "plateau"
    # min_delta 10 (SSIM never gains that): rate halved after validations 2 and 3 ((3 - 1) // 1 = 2 cuts), then a
    # full window of 3 validations at the final rate: stop after validation 6
    sets = ("optim.lr=1e-3", "trainer.val_every_n_steps=2", "trainer.max_epochs=10",
            "trainer.early_stopping={patience: 3, min_delta: 10.0, lr_patience: 1, lr_factor: 0.5}")
    train(tiny_config(data, out, *sets))
    m = metrics(out)
    assert m["stopped_by"] == "early_stopping" and m["validations"] == 6 and m["lr_reductions"] == 2
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3 / 4)
    again = train(tiny_config(data, out, *sets), resume=True)
    assert again.convergence["lr_reductions"] == 2 and again.convergence["steps"] == m["steps"]


def test_time_cap_and_csv_logger(data, tmp_path):
    out = tmp_path / "timed"
    train(tiny_config(data, out, "trainer.max_time=0.001", "trainer.max_epochs=50", "trainer.logger=csv"))
    m = metrics(out)
    assert m["stopped_by"] == "max_time" and m["steps"] < 50 * 6
    assert (out / "csv" / "metrics.csv").is_file() and not (out / "tensorboard").exists()


def test_record_without_validation_is_not_converged():
    trainer = SimpleNamespace(global_step=5, current_epoch=1, max_steps=5, max_epochs=3, callbacks=[])
    record = convergence_record(trainer, Convergence("val_ssim", "max"))
    assert record["stopped_by"] == "max_steps" and record["converged"] is False and record["best_step"] is None
