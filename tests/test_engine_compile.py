"""trainer.compile (networks compiled in place) and the deterministic mode's settings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers_training import tiny_config, tiny_dataset
from mrlearn.engine.compile import CompileNetworks, check_compile, compile_networks
from mrlearn.errors import MrlearnError


class _Method(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        self.frozen = nn.Linear(2, 2).requires_grad_(False)
        self.loss = nn.L1Loss()


def test_compile_networks_compiles_trainable_children_in_place_and_keeps_their_names():
    method = _Method()
    keys = list(method.state_dict())
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    eager = method.model(x)
    assert compile_networks(method) == ["model"]  # frozen and parameter-free children are left
    assert method.model._compiled_call_impl is not None and method.frozen._compiled_call_impl is None
    assert list(method.state_dict()) == keys  # checkpoints load into an eager network
    torch.testing.assert_close(method.model(x), eager, rtol=1e-5, atol=1e-6)
    assert compile_networks(method) == []  # a second setup (fit after validate) does not compile twice


def test_compile_needs_a_cpp_compiler_on_the_cpu(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("mrlearn.engine.compile.shutil.which", lambda name: None)
    with pytest.raises(MrlearnError, match="trainer.compile.*C\\+\\+ compiler"):
        check_compile("cpu")
    check_compile("cuda")  # inductor builds GPU kernels with Triton, no host compiler check here


def test_make_trainer_adds_the_compile_callback_and_keeps_determinism_without_the_nan_fill(tmp_path):
    from mrlearn.engine.trainer import make_trainer

    data = tiny_dataset(tmp_path / "data")
    plain, _ = make_trainer(tiny_config(data, tmp_path / "a"), tmp_path / "a")
    assert not any(isinstance(c, CompileNetworks) for c in plain.callbacks)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    compiled, _ = make_trainer(tiny_config(data, tmp_path / "b", "trainer.compile=true"), tmp_path / "b")
    assert isinstance(compiled.callbacks[0], CompileNetworks)
