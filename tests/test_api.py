"""The public API of ``mrlearn/__init__.py``: its doctests, lazy imports (no Lightning on the classical path),
``load_model`` without a config.yaml, and ``mrlearn reconstruct --method ... --set``."""

import doctest
import subprocess
import sys

import numpy as np

import mrlearn


def test_public_api_doctests():
    result = doctest.testmod(mrlearn, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


def _fresh(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_import_and_classical_path_never_import_lightning(tmp_path):
    """``import mrlearn`` loads no torch; a classical reconstruction, and the CLI's classical path, no Lightning."""
    out = _fresh("import sys, mrlearn; print('torch' in sys.modules, any('lightning' in m for m in sys.modules))")
    assert out.split() == ["False", "False"]
    out = _fresh(
        "import sys, numpy as np, mrlearn\n"
        "k = (np.random.default_rng(0).standard_normal((4, 24, 20)) + 0j).astype(np.complex64)\n"
        "mrlearn.reconstruct(k, method='cg-sense', max_iter=2, calib_size=8)\n"
        "import mrlearn.commands.reconstruct as c\n"
        "c.method_options('cs-l1', ['lam=0.01'])\n"
        "print(any('lightning' in m for m in sys.modules))")
    assert out.split() == ["False"]


def test_reconstruct_cli_set_options_and_one_line_errors(tmp_path, capsys):
    from mrlearn.api.volumes import read_volume, write_volume
    from mrlearn.cli import main

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:32j, -1:1:24j]
    img = ((yy / 0.8) ** 2 + (xx / 0.7) ** 2 < 1).astype(np.complex64)
    maps = np.stack([np.exp(-((yy - np.sin(a)) ** 2 + (xx - np.cos(a)) ** 2)) for a in (0, 1.6, 3.2, 4.8)])
    ksp = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(maps * img, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    ksp = (ksp + 1e-3 * rng.standard_normal(ksp.shape)).astype(np.complex64)
    mask = (rng.random((32, 24)) < 0.4).astype(np.float32)
    mask[10:22, 6:18] = 1  # a 2-D mask with a 12 x 12 calibration box
    data = tmp_path / "data"
    data.mkdir()
    write_volume(data / "vol.h5", np.stack([ksp * mask] * 2), mask=mask, acquisition="AXT2",
                 attrs={"acceleration": 2.5, "num_low_frequency": 12})
    out = tmp_path / "out"
    rc = main(["reconstruct", "--method", "cs-l1", "--data", str(data), "--out", str(out), "--set", "lam=0.01",
               "--set", "max_iter=5", "--set", "calib_size=12"])
    assert rc == 0
    import h5py

    with h5py.File(out / "vol.h5") as f:
        rec = f["reconstruction"][()]
    assert rec.shape[0] == 2 and np.isfinite(rec).all() and rec.max() > 0
    assert read_volume(data / "vol.h5")["mask"].shape == (32, 24)
    capsys.readouterr()
    assert main(["reconstruct", "--method", "cs-l1", "--data", str(data), "--out", str(out), "--set", "lamda=0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--set.lamda: unknown option for method 'cs-l1'; valid keys:" in err[0] and " lam," in err[0]


def test_load_model_reconstructs_without_config_yaml(tmp_path):
    """A checkpoint saved by training, moved away from its run folder, still loads and reconstructs."""
    import torch
    from mrlearn.api.model import LoadedModel, _config
    from mrlearn.config import config_from_dict
    from mrlearn.training.runner import build_method

    cfg = config_from_dict({"model": {"name": "unet", "chans": 4, "num_pool_layers": 2}, "method": {"name": "supervised"}})
    module = build_method(cfg)
    ckpt = {"state_dict": module.state_dict(), "mrlearn": {"model": dict(cfg.model), "method": dict(cfg.method)}}
    path = tmp_path / "moved.ckpt"
    torch.save(ckpt, path)
    loaded = mrlearn.load_model(path)
    assert isinstance(loaded, LoadedModel) and _config(path, ckpt).model["chans"] == 4
    k = (np.random.default_rng(0).standard_normal((2, 1, 32, 24)) + 0j).astype(np.complex64)
    out = loaded.reconstruct(k)
    assert out.shape == (2, 32, 24) and out.dtype == np.float32 and np.isfinite(out).all()
