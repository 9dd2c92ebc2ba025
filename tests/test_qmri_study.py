"""Networks, losses, training on the engine's Trainer (deterministic, convergence record) and the label study end to
end on the tiny study config."""

from __future__ import annotations

import json

import pytest
import torch

from mrlearn.cli import main
from mrlearn.errors import MrlearnError
from mrlearn.qmri.train import train_network
from mrlearn.qmri.networks import IvimMLP, hybrid_loss, self_supervised_loss, supervised_loss
from mrlearn.qmri.signal import add_noise, get_model, sample_uniform

B = torch.tensor([0, 10, 20, 30, 50, 80, 100, 200, 400, 800], dtype=torch.float64)
RANGES = {"S0": (0.8, 1.2), "f": (0.1, 0.5), "D": (0.4, 3.0), "Dstar": (10.0, 150.0)}
NAMES = ("S0", "f", "D", "Dstar")


def test_mlp_shape_width_and_nonnegative_outputs():
    net = IvimMLP(10)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 10)] * 3 + [(10, 4)]
    assert sum(isinstance(m, torch.nn.ELU) for m in net.modules()) == 3
    wide = IvimMLP(10, width=40)
    assert [m.out_features for m in wide.modules() if isinstance(m, torch.nn.Linear)] == [40, 40, 40, 4]
    assert (net(torch.randn(7, 10)) >= 0).all()


def test_losses_closed_form():
    pred = torch.tensor([[1.0, 2.0]])
    gt = torch.tensor([[0.0, 2.0]])
    mle = torch.tensor([[1.0, 0.0]])
    assert supervised_loss(pred, gt).item() == pytest.approx(0.5)
    assert hybrid_loss(pred, mle, gt, 0.25).item() == pytest.approx(0.25 * 2.0 + 0.75 * 0.5)
    fn, _ = get_model("ivim_additive")
    theta = torch.tensor([[1.0, 0.2, 1.0, 20.0]], dtype=torch.float64)
    scales = torch.tensor([1.2, 0.5, 3.0, 150.0], dtype=torch.float64)
    clean = fn(theta, B)
    assert self_supervised_loss(theta / scales, clean, scales, fn, B).item() == pytest.approx(0.0, abs=1e-20)
    assert self_supervised_loss(theta / scales, clean + 0.1, scales, fn, B).item() == pytest.approx(0.01)


def _train(label, tmp_path, seed=0, alpha=0.5, max_epochs=3, patience=10, lr=3e-3, init=None, tag=""):
    g = torch.Generator().manual_seed(0)
    theta = sample_uniform(RANGES, NAMES, 256, g)
    fn, _ = get_model("ivim_additive")
    sig = add_noise(fn(theta, B), 30, generator=g)
    scales = torch.tensor([RANGES[k][1] for k in NAMES], dtype=torch.float64)
    return train_network(sig, theta / scales, (theta * 1.1) / scales, B, scales, "ivim_additive", label,
                         run_dir=tmp_path / f"{label}_{seed}_{tag}", alpha=alpha, seed=seed, max_epochs=max_epochs,
                         batch_size=64, patience=patience, optim={"name": "adam", "lr": lr}, init_state=init)


def test_training_is_deterministic_and_learns(tmp_path):
    net_a, info_a = _train("gt", tmp_path, seed=1, tag="a")
    net_b, info_b = _train("gt", tmp_path, seed=1, tag="b")
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(pa, pb)
    assert info_a == info_b
    # the untrained network's validation loss is the first epoch's upper bound: training must go below it
    _, info_0 = _train("gt", tmp_path, seed=1, max_epochs=1, tag="one")
    assert info_a["best_val_loss"] < info_0["best_val_loss"]
    net_ss, info_ss = _train("ss", tmp_path, seed=1)
    assert info_ss["best_val_loss"] < 0.05  # signal-space MSE of a trained net (signals ~ 1, sigma 1/30)
    net_c, _ = _train("gt", tmp_path, seed=2)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(net_a.parameters(), net_c.parameters()))


def test_convergence_record_cap_while_improving_vs_early_stop(tmp_path):
    _, capped = _train("gt", tmp_path, max_epochs=3, patience=10, tag="cap")
    assert capped["stopped_by"] == "max_epochs" and capped["converged"] is False
    assert capped["steps"] == 3 * 4 and capped["best_step"] <= capped["steps"]  # 230 signals / batch 64 -> 4 steps
    # lr 0 never improves after the first epoch: early stopping after `patience` epochs, which is convergence
    _, stopped = _train("gt", tmp_path, max_epochs=50, patience=2, lr=0.0, tag="es")
    assert stopped["stopped_by"] == "early_stopping" and stopped["converged"] is True
    assert stopped["best_epoch"] == 0 and stopped["epochs"] == 3 and stopped["best_step"] == 4


def test_init_from_groundtruth_network_starts_there(tmp_path):
    net_gt, _ = _train("gt", tmp_path, tag="gt")
    net_mle, rec = _train("mle", tmp_path, max_epochs=1, lr=0.0, init=net_gt.state_dict(), tag="init")
    assert rec["init_from_gt"] is True
    for pa, pb in zip(net_gt.parameters(), net_mle.parameters()):
        assert torch.equal(pa, pb)  # lr 0: the weights are the groundtruth network's


def test_study_end_to_end_tiny_config(tmp_path):
    out = tmp_path / "study"
    rc = main(["qmri", "study", "ivim_labels_tiny", "--out", str(out), "--set", "qmri.snrs=[20]",
               "--set", "qmri.methods=[mle_fit, net_gt, net_mle, net_ss, hybrid, net_gt_wide]",
               "--set", "qmri.n_train=200", "--set", "trainer.max_epochs=2"])
    assert rc == 0
    assert (out / "study.csv").is_file() and (out / "report.html").is_file()
    import csv

    with open(out / "study.csv", newline="") as fh:  # the runner's own metrics are study.csv columns
        study_rows = {r["group"]: r for r in csv.DictReader(fh)}
    assert float(study_rows["snr20/net_gt"]["rmse_Dstar"]) > 0 and study_rows["snr20/net_gt"]["stopped_by"]
    fit = study_rows["snr20/mle_fit"]  # the per-voxel fit says how it stopped, as a classical solver
    assert fit["monitor"] == "voxels_converged" and 0 <= float(fit["best_score"]) <= 1
    assert fit["stopped_by"] == ("tolerance" if float(fit["best_score"]) == 1 else "max_iter")
    study_html = (out / "report.html").read_text()
    assert "rmse_Dstar_mean" in study_html and "psnr_mean" not in study_html  # summary.metrics of the preset
    run = out / "runs" / "base__seed0"
    for name in ("report.html", "table.csv", "table.json", "metrics.json", "result.json",
                 "bias_variance_snr20.png", "curves_snr20.png", "maps_bias_snr20.png", "maps_std_snr20.png",
                 "models/snr20_net_mle.pt", "models/snr20_net_gt_wide.pt"):
        assert (run / name).is_file(), name
    rows = json.loads((run / "table.json").read_text())
    methods = {r["method"] for r in rows}
    assert methods == {"mle_fit", "net_gt", "net_mle", "net_ss", "hybrid_a0.5", "net_gt_wide"}
    # table rows are the grid summaries: RMSE^2 pooled over the grid >= mean |bias|^2 (Jensen) and std >= 0
    assert all(r["rmse"] ** 2 >= r["abs_bias"] ** 2 - 1e-12 and r["std"] >= 0 for r in rows)
    html = (run / "report.html").read_text()
    assert "Findings" in html and "not converged" in html and "data:image/png;base64" in html
    metrics = json.loads((run / "metrics.json").read_text())
    assert "groundtruth labels std" in " ".join(metrics["findings"])
    training = metrics["training"]
    assert training["snr20/net_mle"]["init_from_gt"] is True and training["snr20/net_gt"]["init_from_gt"] is False
    assert all(t["stopped_by"] == "max_epochs" and t["converged"] is False for t in training.values())
    study_csv = (out / "study.csv").read_text()
    assert "snr20/net_mle" in study_csv and "max_epochs" in study_csv


def test_bias_std_rmse_identity():
    from mrlearn.qmri.study import grid_metrics

    est = torch.randn(3, 50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 1.5
    truth = torch.ones(3, 2, dtype=torch.float64)
    m = grid_metrics(est, truth)
    n = est.shape[1]
    # RMSE^2 = bias^2 + (n-1)/n std^2 (std unbiased)
    assert torch.allclose(torch.from_numpy(m["rmse"] ** 2), torch.from_numpy(m["bias"] ** 2 + (n - 1) / n * m["std"] ** 2))


@pytest.mark.parametrize("override,match", [
    ("qmri.n_tran=5", "qmri.n_tran: unknown key"),
    ("qmri.methods=[net_magic]", "unknown method"),
    ("qmri.alphas=[1.5]", "alpha"),
    ("qmri.model=adc", "IVIM model"),
    ("qmri.n_train=many", "qmri.n_train"),
    ("qmri.ranges={f: [0.5, 0.1], S0: [0.8, 1.2], D: [0.4, 3], Dstar: [10, 150]}", "qmri.ranges.f"),
])
def test_study_config_errors_are_one_line(tmp_path, override, match, capsys):
    rc = main(["qmri", "study", "ivim_labels_tiny", "--out", str(tmp_path / "x"), "--set", override])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and match in err and len(err.splitlines()) == 1, err


def test_missing_study_config_is_an_error():
    from mrlearn.qmri.runner import study_from_config

    with pytest.raises(MrlearnError):
        study_from_config("/nonexistent/ivim.yaml")


# ------------------------------------------------------------------ stopping on the stability of the estimates
WIDTHS = torch.tensor([RANGES[k][1] - RANGES[k][0] for k in NAMES], dtype=torch.float64)


def _stability_run(estimates, tol=0.01, patience=3):
    """Feed a sequence of estimates through the anchor rule and the engine's plateau rule; returns (stop index
    or None, moves per step)."""
    from mrlearn.engine.plateau import Plateau
    from mrlearn.qmri.stability import EstimateStability

    rule, plateau = EstimateStability(WIDTHS, tol), Plateau("max", patience)
    moves = []
    for i, est in enumerate(estimates):
        m, _ = rule.push(est)
        moves.append(m)
        if plateau.push(float(m)) == "stop":
            return i, moves
    return None, moves


def test_stability_change_is_the_rms_over_signals_relative_to_the_range_width():
    from mrlearn.qmri.stability import relative_change

    old = torch.zeros(4, 4, dtype=torch.float64)
    new = old.clone()
    new[:, 3] = torch.tensor([1.4, -1.4, 1.4, -1.4])  # D* moves 1 % of its 140 um^2/ms width on every signal
    new[0, 1] = 0.004 * 2  # f: one signal of 4 moves 2 % -> RMS 1 %
    change, per = relative_change(new, old, WIDTHS)
    assert per == pytest.approx([0.0, 0.01, 0.0, 0.01]) and change == pytest.approx(0.01)
    new[1, 2] = float("nan")  # a NaN estimate never counts as settled
    assert relative_change(new, old, WIDTHS)[0] == float("inf")


def test_stable_estimates_stop_and_drifting_ones_continue():
    g = torch.Generator().manual_seed(0)
    base = sample_uniform(RANGES, NAMES, 200, g)
    # settled: jitter of 0.1 % of each range around fixed estimates -> stops after `patience` validations
    jitter = [base + 0.001 * WIDTHS * torch.randn(base.shape, generator=g, dtype=torch.float64) for _ in range(20)]
    stop, moves = _stability_run(jitter)
    assert stop == 3 and moves[-1] == 1  # the first validation is the anchor; 3 quiet ones after it
    # a slow drift of D* (0.4 % of its range per validation, each step below the 1 % tolerance) keeps moving the
    # anchor: no stop in 40 validations, where comparing consecutive validations would have stopped at once
    drift = []
    for i in range(40):
        est = base.clone()
        est[:, 3] += 0.004 * WIDTHS[3] * i
        drift.append(est)
    stop, moves = _stability_run(drift)
    assert stop is None and moves[-1] >= 12
    # a drift that ends: it stops `patience` validations after the last move
    stop, moves = _stability_run(drift[:10] + [drift[9]] * 10)
    assert stop is not None and 10 <= stop <= 9 + 3 + 1


def test_stability_rule_refuses_bad_settings():
    from mrlearn.qmri.stability import EstimateStability, relative_change

    with pytest.raises(ValueError):
        EstimateStability(WIDTHS, 0.0)
    with pytest.raises(ValueError):
        EstimateStability(torch.tensor([1.0, 0.0]), 0.01)
    with pytest.raises(ValueError):
        relative_change(torch.zeros(3, 4), torch.zeros(3, 3), WIDTHS)


def test_training_stops_on_stable_estimates_and_keeps_the_last_weights(tmp_path):
    g = torch.Generator().manual_seed(0)
    theta = sample_uniform(RANGES, NAMES, 256, g)
    fn, _ = get_model("ivim_additive")
    sig = add_noise(fn(theta, B), 30, generator=g)
    scales = torch.tensor([RANGES[k][1] for k in NAMES], dtype=torch.float64)
    common = dict(run_dir=None, seed=0, batch_size=64, patience=3, widths=WIDTHS, stop_on="stability")

    def run(tag, lr, max_epochs, tol=0.005):
        return train_network(sig, theta / scales, theta / scales, B, scales, "ivim_additive", "gt",
                             **{**common, "run_dir": tmp_path / tag}, max_epochs=max_epochs, stability_tol=tol,
                             optim={"name": "adam", "lr": lr})

    # lr 0: the estimates never change -> stop after patience validations, converged
    _, still = run("still", 0.0, 50)
    assert still["stopped_by"] == "early_stopping" and still["converged"] is True and still["epochs"] == 4
    assert still["monitor"] == "val_estimate_moves" and still["stability"]["moves"] == 1
    assert still["stability"]["changes"][1:] == [0.0, 0.0, 0.0] and still["selected"] == "last"
    # a large rate with a tiny tolerance: the estimates keep moving -> the cap stops it, NOT converged
    net, moving = run("moving", 3e-2, 6, tol=1e-6)
    assert moving["stopped_by"] == "max_epochs" and moving["converged"] is False
    assert moving["stability"]["moves"] == 6 and moving["best_step"] == moving["steps"]
    assert all(c is None or c > 1e-6 for c in moving["stability"]["changes"])


def test_stability_settings_are_checked(tmp_path, capsys):
    for override, match in (("qmri.stop_on=loss", "qmri.stop_on"), ("qmri.stability_tol=0", "qmri.stability_tol"),
                            ("qmri.stability_tol=2", "qmri.stability_tol")):
        rc = main(["qmri", "study", "ivim_labels_tiny", "--out", str(tmp_path / "x"), "--set", override])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and match in err and len(err.splitlines()) == 1, err


def test_presets_stop_on_stability_and_the_check_scales_the_patience():
    from mrlearn.study import load_study, run_config
    from mrlearn.study.stopping_check import scaled_overrides

    for name in ("ivim_labels", "ivim_labels_gpu", "ivim_labels_tiny"):
        spec = load_study(name)
        cfg = run_config(spec, spec.runs()[0], "/tmp/unused")
        assert cfg.extra["qmri"].stop_on == "stability", name
        scaled = scaled_overrides(cfg, 2.0)
        assert scaled.get("qmri.patience") == 2 * cfg.extra["qmri"].patience, name
