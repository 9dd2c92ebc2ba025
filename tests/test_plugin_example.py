"""Extending mrlearn from outside: the example plugin package (examples/plugin) installed with pip trains, studies
and reloads in new processes; entries registered without a package are named by the checkpoint when missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_training import TINY_SET, tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin"
SETTINGS = [s for s in TINY_SET if not s.startswith("model.")]


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full, cwd=cwd)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example package pip-installed (no dependencies, no build isolation: offline) into a fresh folder."""
    target = tmp_path_factory.mktemp("site")
    proc = _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                 "--target", str(target), str(PLUGIN)], {}, ROOT)
    if proc.returncode != 0:
        pytest.skip(f"pip could not build the example package here: {proc.stderr.strip()[-200:]}")
    return target


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("plugin") / "data")


def test_installed_plugin_trains_and_reloads_in_a_new_process(installed, data, tmp_path):
    env = {"PYTHONPATH": str(installed)}
    config = installed / "mrlearn_example" / "tiny.yaml"
    out = tmp_path / "run"
    train = _run([sys.executable, "-m", "mrlearn.cli", "train", "--config", str(config), "--out", str(out),
                  "--set", f"data.root={data}", *sum((["--set", s] for s in SETTINGS), []), "--set", "model.chans=4"],
                 env, tmp_path)
    assert train.returncode == 0, train.stderr[-2000:]
    ckpt = out / "checkpoints" / "last.ckpt"
    code = ("import json, mrlearn, numpy as np\n"
            f"m = mrlearn.load_model({str(ckpt)!r})\n"
            "print(json.dumps({'model': type(m.module.model).__name__, 'method': type(m.module).__name__}))")
    proc = _run([sys.executable, "-c", code], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"model": "TinyDnCNN", "method": "SupervisedTV"}
    # the checkpoint names the plugin module it needs
    import torch

    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["mrlearn"]["plugins"]
    assert {"mrlearn_example.model", "mrlearn_example.method", "mrlearn_example.loss"} <= set(stored)
    # without the package: one line naming the plugin module and what to do
    proc = _run([sys.executable, "-m", "mrlearn.cli", "reconstruct", "--checkpoint", str(ckpt), "--data",
                 str(data / "test"), "--out", str(tmp_path / "rec")], {"PYTHONPATH": ""}, tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "mrlearn_example.model" in err[0] and "MRLEARN_PLUGINS" in err[0], proc.stderr


def test_installed_plugin_runner_in_a_study(installed, data, tmp_path):
    config = installed / "mrlearn_example" / "tiny.yaml"
    study = tmp_path / "study.yaml"
    study.write_text(json.dumps({"name": "plugin_study", "base": str(config), "runner": "timed_train", "seeds": [0],
                                 "set": [f"data.root={data}", *SETTINGS, "model.chans=4", "trainer.max_epochs=1"],
                                 "arms": {"tv": {}}}), encoding="utf-8")
    proc = _run([sys.executable, "-m", "mrlearn.cli", "study", str(study), "--out", str(tmp_path / "s")],
                {"PYTHONPATH": str(installed)}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = list((tmp_path / "s" / "runs").glob("*/result.json"))
    assert len(results) == 1
    assert json.loads(results[0].read_text())["extra"]["train_seconds"] > 0


def test_script_registered_model_is_named_when_missing(data, tmp_path):
    """A model registered by a module on MRLEARN_PLUGINS trains; a new process without it gets one line naming it."""
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\nfrom mrlearn.registry import register\n\n"
        "@register('model', 'my_cnn')\nclass MyCNN(nn.Module):\n"
        "    def __init__(self, chans: int = 4):\n        super().__init__()\n"
        "        self.net = nn.Sequential(nn.Conv2d(1, chans, 3, padding=1), nn.ReLU(), nn.Conv2d(chans, 1, 3, padding=1))\n"
        "    def forward(self, x):\n        return x + self.net(x)\n", encoding="utf-8")
    env = {"PYTHONPATH": str(tmp_path), "MRLEARN_PLUGINS": "my_models"}
    out = tmp_path / "run"
    train = _run([sys.executable, "-m", "mrlearn.cli", "train", "--config", "unet_demo", "--out", str(out),
                  "--set", f"data.root={data}", *sum((["--set", s] for s in SETTINGS), []), "--set", "model={name: my_cnn}"],
                 env, tmp_path)
    assert train.returncode == 0, train.stderr[-2000:]
    ckpt = out / "checkpoints" / "last.ckpt"
    load = f"import mrlearn; m = mrlearn.load_model({str(ckpt)!r}); print(type(m.module.model).__name__)"
    ok = _run([sys.executable, "-c", load], env, tmp_path)
    assert ok.returncode == 0 and ok.stdout.strip().endswith("MyCNN"), ok.stderr[-2000:]
    bad = _run([sys.executable, "-c", load], {"PYTHONPATH": str(tmp_path), "MRLEARN_PLUGINS": ""}, tmp_path)
    assert bad.returncode != 0
    last = bad.stderr.strip().splitlines()[-1]
    assert "my_models" in last and "MRLEARN_PLUGINS=my_models" in last, bad.stderr
