"""Signal models, closed-form derivatives, noise and protocol files."""

from __future__ import annotations

import math

import pytest
import torch

from mrlearn.errors import MrlearnError
from mrlearn.qmri.signal import add_noise, get_model, load_protocol, model_derivatives

B = torch.tensor([0, 10, 50, 200, 800], dtype=torch.float64)


def test_ivim_conventions_closed_form():
    p = torch.tensor([[1.1, 0.3, 1.5, 40.0]], dtype=torch.float64)
    b = 200.0
    common = get_model("ivim")[0](p, torch.tensor([b], dtype=torch.float64)).item()
    additive = get_model("ivim_additive")[0](p, torch.tensor([b], dtype=torch.float64)).item()
    # b in s/mm^2, D in um^2/ms: b * D * 1e-3 is dimensionless
    assert common == pytest.approx(1.1 * (0.3 * math.exp(-0.2 * 40) + 0.7 * math.exp(-0.2 * 1.5)), rel=1e-12)
    assert additive == pytest.approx(1.1 * (0.3 * math.exp(-0.2 * 41.5) + 0.7 * math.exp(-0.2 * 1.5)), rel=1e-12)
    assert get_model("adc")[0](p[:, :2].clone().fill_(1.0), B)[0, -1].item() == pytest.approx(math.exp(-0.8))
    t2 = get_model("t2")[0](torch.tensor([[2.0, 50.0]], dtype=torch.float64), torch.tensor([25.0], dtype=torch.float64))
    assert t2.item() == pytest.approx(2 * math.exp(-0.5))


@pytest.mark.parametrize("name,params,x", [
    ("ivim", [[1.1, 0.3, 1.5, 40.0], [0.9, 0.1, 2.5, 12.0]], B),
    ("ivim_additive", [[1.1, 0.3, 1.5, 40.0], [0.9, 0.1, 2.5, 12.0]], B),
    ("adc", [[1.0, 1.2], [0.5, 2.0]], B),
    ("t2", [[1.0, 60.0], [0.7, 120.0]], torch.tensor([10.0, 30.0, 80.0], dtype=torch.float64)),
])
def test_closed_form_derivatives_match_autograd(name, params, x):
    fn, _ = get_model(name)
    p = torch.tensor(params, dtype=torch.float64)
    sig, jac, hess = model_derivatives(name, p, x)
    assert torch.allclose(sig, fn(p, x))
    for v in range(p.shape[0]):
        j_ref = torch.autograd.functional.jacobian(lambda q: fn(q[None], x)[0], p[v])
        assert torch.allclose(jac[v], j_ref, rtol=1e-10, atol=1e-12)
        for n in range(x.numel()):
            h_ref = torch.autograd.functional.hessian(lambda q: fn(q[None], x)[0, n], p[v])
            assert torch.allclose(hess[v, n], h_ref, rtol=1e-9, atol=1e-12)


def test_rician_and_gaussian_noise_statistics():
    g = torch.Generator().manual_seed(0)
    s = torch.full((200000,), 0.5, dtype=torch.float64)
    gauss = add_noise(s, 20, "gaussian", g)
    assert abs(gauss.std().item() - 1 / 20) < 5e-4 and abs(gauss.mean().item() - 0.5) < 5e-4
    zero = add_noise(torch.zeros(200000, dtype=torch.float64), 10, "rician", g)
    # Rayleigh: mean sigma sqrt(pi/2), E[m^2] = 2 sigma^2
    assert zero.mean().item() == pytest.approx(0.1 * math.sqrt(math.pi / 2), rel=5e-3)
    assert (zero ** 2).mean().item() == pytest.approx(2 * 0.01, rel=5e-3)
    with pytest.raises(MrlearnError, match="SNR"):
        add_noise(s, 0)
    with pytest.raises(MrlearnError, match="noise"):
        add_noise(s, 10, "poisson")


def test_protocol_from_file_and_list(tmp_path):
    f = tmp_path / "b.txt"
    f.write_text("0 10 20\n30,50 800\n")
    assert load_protocol(f).tolist() == [0, 10, 20, 30, 50, 800]
    assert load_protocol([0, 100]).tolist() == [0, 100]
    bad = tmp_path / "bad.txt"
    bad.write_text("0 ten 20")
    with pytest.raises(MrlearnError, match="not a number"):
        load_protocol(bad)
    with pytest.raises(MrlearnError, match="not found"):
        load_protocol(tmp_path / "missing.txt")
    with pytest.raises(MrlearnError, match="non-negative"):
        load_protocol([0, -5, 10])
    with pytest.raises(MrlearnError, match="at least 2"):
        load_protocol([0])
