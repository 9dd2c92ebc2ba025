"""Progress lines (mrlearn.progress, engine.progress): the ETA, the rate limit, the line's fields in a real tiny
training run, silence with progress_every 0, the study's [k/n] run label, the solvers' lines, bad settings."""

from __future__ import annotations

import math
import re

import pytest
import yaml

from helpers_training import tiny_config, tiny_dataset
from mrlearn.errors import MrlearnError
from mrlearn.progress import (Ticker, count_text, eta_seconds, format_duration, progress_context, progress_every,
                              progress_label)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("progress") / "data")


def test_eta_is_the_remaining_count_at_the_observed_rate():
    assert eta_seconds(30, 100, 60.0) == pytest.approx(140.0)  # 30 in 60 s -> 70 more in 140 s
    assert eta_seconds(30, 100, 60.0, done_at_start=10) == pytest.approx(210.0)  # resumed at 10: 20 in 60 s
    assert eta_seconds(100, 100, 5.0) == 0.0
    for args in ((0, 100, 5.0), (10, None, 5.0), (10, math.inf, 5.0), (10, 100, 0.0), (10, 100, 5.0, 10)):
        assert eta_seconds(*args) is None  # no rate or no total: unknown, never a made-up number


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (59.9, "59s"), (185, "3m05s"), (3720, "1h02m"),
                                           (2 * 86400 + 3 * 3600 + 5, "2d03h"), (math.inf, "?")])
def test_durations(seconds, text):
    assert format_duration(seconds) == text


def test_ticker_prints_at_most_every_interval_with_count_fields_elapsed_and_eta(capsys):
    clock = Clock()
    t = Ticker("CG-SENSE", every_s=10, clock=clock)
    clock.t += 9.9
    assert t.update("iteration", 5, 100, ["relative residual 1e-03"]) is None  # not before the interval
    clock.t += 0.1
    line = t.update("iteration", 10, 100, ["relative residual 1e-03"], bound=True)
    assert line == "CG-SENSE: iteration 10/100 (10%), relative residual 1e-03, 10s elapsed, ETA <= 1m30s"
    clock.t += 5
    assert t.update("iteration", 15, 100) is None  # 5 s after the last line
    assert capsys.readouterr().err == line + "\n"  # on stderr, one line
    assert count_text("step", 7, None) == "step 7"


def test_interval_zero_is_silent_and_the_context_sets_label_and_interval(capsys, monkeypatch):
    clock = Clock()
    off = Ticker("x", every_s=0, clock=clock)
    clock.t += 1e6
    assert off.update("step", 1, 2, force=True) is None and not off.due()
    monkeypatch.delenv("MRLEARN_PROGRESS_EVERY", raising=False)
    assert progress_every() == 30.0 and progress_label() == ""
    monkeypatch.setenv("MRLEARN_PROGRESS_EVERY", "5")
    assert progress_every() == 5.0
    with progress_context("[2/5] U-Net__seed0", 1e-9):
        with progress_context("eval"):  # inner block without an interval keeps the outer one
            assert progress_every() == 1e-9 and progress_label() == "[2/5] U-Net__seed0: eval"
            t = Ticker("training", clock=clock)
    clock.t += 1
    assert t.update("step", 3, 4).startswith("[2/5] U-Net__seed0: eval: training: step 3/4 (75%), ")
    assert progress_every() == 5.0 and capsys.readouterr().err.count("\n") == 1
    monkeypatch.setenv("MRLEARN_PROGRESS_EVERY", "often")
    with pytest.raises(MrlearnError, match="MRLEARN_PROGRESS_EVERY: 'often' is not a number of seconds >= 0"):
        Ticker("x")


def test_training_prints_step_epoch_validation_elapsed_and_eta_lines(data, tmp_path, capsys):
    from mrlearn.training.runner import train

    train(tiny_config(data, tmp_path / "on", "trainer.progress_every=1e-9", "trainer.limit_train_batches=2"))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("training: ")]
    steps = [ln for ln in lines if ln.startswith("training: step ")]
    assert steps and re.fullmatch(r"training: step 1/4 \(25%\), epoch 1/2, \d+s elapsed, ETA \d+s", steps[0]), steps[0]
    # after the first validation the line carries the monitored metric, its best so far, and the ETA
    late = next(ln for ln in steps if ln.startswith("training: step 3/4"))
    assert re.search(r", epoch 2/2, val_ssim \d\.\d+ \(best \d\.\d+ at step 2\), \d+s elapsed, ETA \d+s$", late), late
    assert any(ln.startswith("training: validation batch 1/") for ln in lines)  # a long validation says so
    assert any(ln.startswith("training: finished, step 4/4 (100%)") for ln in lines)
    assert not any("ETA" in ln for ln in lines if "finished" in ln)


def test_progress_every_zero_prints_no_line(data, tmp_path, capsys):
    from mrlearn.training.runner import train

    train(tiny_config(data, tmp_path / "off", "trainer.progress_every=0", "trainer.max_epochs=1",
                      "trainer.limit_train_batches=2"))
    err = capsys.readouterr().err
    assert "training:" not in err and "elapsed" not in err


def test_bad_progress_every_is_one_line(data, tmp_path):
    for value in ("-1", ".inf"):
        with pytest.raises(MrlearnError, match="trainer.progress_every: .* is not a number of seconds >= 0"):
            tiny_config(data, tmp_path / "bad", f"trainer.progress_every={value}")


def test_study_runs_label_their_lines_k_of_n(tmp_path, capsys):
    from mrlearn.study import RunOutcome, load_study, register_runner, run_study

    def probe(cfg):
        """Stands in for a runner's long loop: one forced line at the run's interval."""
        Ticker("probe").update("step", 1, 2, force=True)
        return RunOutcome(groups={"all": {"psnr": 30.0, "ssim": 0.9, "nmse": 0.01}})

    register_runner("progress_probe", probe)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "base": "unet_demo", "runner": "progress_probe", "seeds": [0],
                                    "set": ["trainer.progress_every=1e-9"],
                                    "arms": {"low": {"optim.lr": 0.1}, "high": {"optim.lr": 0.3}}}))
    run_study(load_study(path), tmp_path / "out", log=lambda s: None)
    err = capsys.readouterr().err.splitlines()
    labels = sorted(ln.split(": probe: ")[0] for ln in err if ": probe: " in ln)
    assert labels in (["[1/2] high__seed0", "[2/2] low__seed0"], ["[1/2] low__seed0", "[2/2] high__seed0"]), labels


@pytest.mark.parametrize("solver", ["cg-sense", "cs", "tv"])
def test_classical_solvers_print_iteration_lines(solver, capsys):
    import torch

    from mrlearn.recon.cg_sense import cg_sense
    from mrlearn.recon.cs import cs_l1_wavelet
    from mrlearn.recon.tv import tv_recon

    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 2, 16, 16, dtype=torch.complex64, generator=g)
    maps = torch.randn(1, 2, 16, 16, dtype=torch.complex64, generator=g)
    maps = maps / maps.abs().pow(2).sum(1, keepdim=True).sqrt()
    run = {"cg-sense": lambda: cg_sense(k, None, maps, max_iter=3, tol=0.0),
           "cs": lambda: cs_l1_wavelet(k, None, maps, max_iter=3), "tv": lambda: tv_recon(k, None, maps, max_iter=3)}
    with progress_context("[1/1] r", 1e-9):
        run[solver]()
    lines = capsys.readouterr().err.splitlines()
    name = {"cg-sense": "CG-SENSE", "cs": "CS (L1-wavelet FISTA)", "tv": "TV (ADMM)"}[solver]
    quantity = "relative residual" if solver == "cg-sense" else "relative change"
    assert lines and all(ln.startswith(f"[1/1] r: {name}: iteration ") for ln in lines), lines
    assert re.search(rf"iteration 2/3 \(67%\), {quantity} \d\.\d\de[-+]\d+, \d+s elapsed, ETA", lines[1]), lines[1]
    with progress_context(None, 0):
        run[solver]()
    assert capsys.readouterr().err == ""


def test_voxel_fits_report_converged_fits(capsys):
    import torch

    from mrlearn.qmri.fit import fit_voxels
    from mrlearn.qmri.signal import get_model

    b = torch.tensor([0, 10, 20, 30, 50, 80, 100, 200, 400, 800.0], dtype=torch.float64)
    theta = torch.tensor([[1.0, 0.2, 1.0, 40.0], [1.0, 0.3, 2.0, 80.0]], dtype=torch.float64)
    fn, _ = get_model("ivim")
    with progress_context(None, 1e-9):
        fit_voxels(fn(theta, b), b, objective="nlls", n_starts=1, max_iter=20)
    lines = capsys.readouterr().err.splitlines()
    assert lines and re.fullmatch(r"ivim fit: voxel fits converged \d/2 \(\d+%\), iteration \d+/20, \d+s elapsed",
                                  lines[0]), lines
