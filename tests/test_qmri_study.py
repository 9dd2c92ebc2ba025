"""Networks, losses, Lightning training (deterministic) and the label study end to end on a tiny config."""

from __future__ import annotations

import json

import pytest
import torch

from mrlearn.cli import main
from mrlearn.errors import MrlearnError
from mrlearn.qmri.module import train_network
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


def _train(label, seed=0, alpha=0.5):
    g = torch.Generator().manual_seed(0)
    theta = sample_uniform(RANGES, NAMES, 256, g)
    fn, _ = get_model("ivim_additive")
    sig = add_noise(fn(theta, B), 30, generator=g)
    scales = torch.tensor([RANGES[k][1] for k in NAMES], dtype=torch.float64)
    return train_network(sig, theta / scales, (theta * 1.1) / scales, B, scales, "ivim_additive", label, alpha=alpha,
                         seed=seed, max_epochs=3, batch_size=64, optim={"name": "adam", "lr": 3e-3})


def test_lightning_training_is_deterministic_and_learns():
    net_a, info_a = _train("gt", seed=1)
    net_b, info_b = _train("gt", seed=1)
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(pa, pb)
    assert info_a == info_b and info_a["best_val_loss"] < 1.0
    net_ss, info_ss = _train("ss", seed=1)
    assert info_ss["best_val_loss"] < 0.05  # signal-space MSE of a trained net
    net_c, _ = _train("gt", seed=2)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(net_a.parameters(), net_c.parameters()))


def test_study_end_to_end_tiny_config(tmp_path):
    out = tmp_path / "study"
    rc = main(["qmri", "study", "ivim_labels_tiny", "--out", str(out), "--set", "qmri.snrs=[20]",
               "--set", "qmri.methods=[mle_fit, net_gt, net_mle, net_ss, hybrid, net_gt_wide]",
               "--set", "qmri.n_train=200", "--set", "trainer.max_epochs=1"])
    assert rc == 0
    for name in ("report.html", "table.csv", "table.json", "metrics.json", "config.yaml", "run.json",
                 "bias_variance_snr20.png", "curves_snr20.png", "maps_bias_snr20.png", "maps_std_snr20.png",
                 "models/snr20_net_mle.pt", "models/snr20_net_gt_wide.pt"):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["seed"] == 0 and "torch" in run["versions"]
    rows = json.loads((out / "table.json").read_text())
    methods = {r["method"] for r in rows}
    assert methods == {"mle_fit", "net_gt", "net_mle", "net_ss", "hybrid_a0.5", "net_gt_wide"}
    assert all(r["rmse"] ** 2 == pytest.approx(r["rmse"] ** 2) and r["std"] >= 0 for r in rows)
    html = (out / "report.html").read_text()
    assert "Findings" in html and "bias_variance_snr20.png" in html
    assert "groundtruth labels std" in " ".join(json.loads((out / "metrics.json").read_text())["findings"])


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
    assert rc == 2 and match in err and len(err.splitlines()) == 1


def test_missing_study_config_is_an_error():
    from mrlearn.qmri.runner import study_from_config

    with pytest.raises(MrlearnError, match="not found"):
        study_from_config("/nonexistent/ivim.yaml")
