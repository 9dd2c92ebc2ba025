"""The Python API checks its inputs like the CLI: one validation layer, one-line errors, never NaN in -> NaN out."""

from __future__ import annotations

import numpy as np
import pytest

import mrlearn
from mrlearn.errors import MrlearnError


def _kspace(coils: int = 2, h: int = 16, w: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.complex64)
    img[4:12, 5:11] = 1.0
    maps = (rng.random((coils, 1, 1)) + 0.5).astype(np.complex64)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img * maps, axes=(-2, -1)), norm="ortho"),
                           axes=(-2, -1)).astype(np.complex64)


def _bad(fragment: str, *args, **kwargs) -> str:
    with pytest.raises(MrlearnError) as exc:
        mrlearn.reconstruct(*args, **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg and fragment in msg, msg
    return msg


K = _kspace()
MAPS = np.ones_like(K) / np.sqrt(2)


@pytest.mark.parametrize("value, fragment", [
    (np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"), (0.0, "all zero"),
])
def test_kspace_values(value, fragment):
    k = K.copy() * 0 + value if value == 0 else K.copy()
    if value != 0:
        k[0, 3, 3] = value
    _bad(fragment, k, method="zero-filled")


def test_tiny_kspace_is_not_called_all_zero():
    _bad("too small for float32", K * 1e-25, method="zero-filled")


@pytest.mark.parametrize("mask, fragment", [
    (np.full(16, np.nan), "NaN or Inf"), (np.zeros(16), "samples nothing"),
    (np.where(np.arange(16) % 2, 0.5, 0.0), "not binary (holds 0.5)"), (np.where(np.arange(16) % 2, 2.0, 0.0), "not binary"),
])
def test_mask_values(mask, fragment):
    _bad(fragment, K, mask, "zero-filled")


@pytest.mark.parametrize("maps, fragment", [
    (np.full_like(MAPS, np.nan), "NaN or Inf"), (np.zeros_like(MAPS), "zero everywhere"),
])
def test_sens_map_values(maps, fragment):
    _bad(fragment, K, np.ones(16), "cg-sense", maps)


@pytest.mark.parametrize("options, fragment", [
    ({"lam": float("nan")}, "options.lam: nan is not a number"), ({"lam": -1.0}, "options.lam: -1.0"),
    ({"max_iter": 0}, "options.max_iter: 0 is not an integer"), ({"max_iter": -5}, "max_iter"),
    ({"tol": float("inf")}, "options.tol"), ({"recon_size": (0, 0)}, "does not fit the k-space matrix"),
    ({"recon_size": (64, 64)}, "does not fit the k-space matrix 16 x 16"), ({"recon_size": "big"}, "not two integers"),
])
def test_option_values(options, fragment):
    _bad(fragment, K, np.ones(16), "cg-sense", MAPS, **options)


def test_cli_set_uses_the_same_ranges(tmp_path, capsys):
    from helpers_data import write_test_volume
    from mrlearn.cli import main

    write_test_volume(tmp_path / "v.h5", slices=1, coils=2, h=16, w=16)
    assert main(["reconstruct", "--method", "cg-sense", "--data", str(tmp_path / "v.h5"), "--out", str(tmp_path / "o"),
                 "--set", "lam=-1"]) == 2
    err = capsys.readouterr().err
    assert "--set.lam: -1 is not a number in [0, 1e+06]" in err and err.count("\n") == 1


def test_good_inputs_still_reconstruct():
    out = mrlearn.reconstruct(K, np.ones(16), "cg-sense", MAPS, lam=0.0, max_iter=5, recon_size=(8, 8))
    assert out.shape == (8, 8) and np.isfinite(out).all()
    assert mrlearn.reconstruct(K, (np.arange(16) % 2 == 0) | (abs(np.arange(16) - 8) < 3), "zero-filled").shape == (16, 16)


@pytest.mark.parametrize("seed", range(30))
def test_random_bad_inputs_never_give_nan(seed):
    """A property check: random corruptions of good inputs either reconstruct to finite images or are refused."""
    rng = np.random.default_rng(seed)
    k, mask, maps = K.copy(), np.ones(16), MAPS.copy()
    choice = rng.integers(6)
    if choice == 0:
        k.flat[rng.integers(k.size)] = rng.choice([np.nan, np.inf, -np.inf])
    elif choice == 1:
        mask = rng.choice([0.0, 1.0, 0.5, np.nan], size=16)
    elif choice == 2:
        maps.flat[rng.integers(maps.size)] = np.nan
    elif choice == 3:
        k *= rng.choice([0.0, 1e-30, 1e30])
    elif choice == 4:
        maps *= 0
    options = {"lam": float(rng.choice([0.01, -0.1, np.nan])), "max_iter": int(rng.choice([5, 0]))}
    try:
        out = mrlearn.reconstruct(k, mask, "cg-sense", maps, **options)
    except MrlearnError as exc:
        assert "\n" not in str(exc)
        return
    assert np.isfinite(out).all()


# ------------------------------------------------------------------------------------------------------- fit_ivim
B = np.array([0, 10, 20, 50, 100, 200, 400, 800.0])


def _ivim(v: int = 4) -> np.ndarray:
    f = np.linspace(0.1, 0.3, v)[:, None]
    return (1 - f) * np.exp(-B * 1e-3) + f * np.exp(-B * 2e-2)


def test_fit_ivim_bad_voxels_are_skipped_and_flagged_without_touching_the_others():
    clean = mrlearn.fit_ivim(_ivim(6)[:4], B)
    s = _ivim(6)[:4].copy()
    s = np.concatenate([s, [[np.nan] * 8], -np.abs(_ivim(1))], axis=0)
    fit = mrlearn.fit_ivim(s, B)
    assert fit.bad.tolist() == [0, 0, 0, 0, 1, 2]
    assert bool(fit.params[4:].isnan().all()) and not bool(fit.converged[4:].any())
    np.testing.assert_allclose(fit.params[:4].numpy(), clean.params.numpy(), rtol=1e-6)  # one NaN voxel harms none
    with pytest.raises(MrlearnError, match="2 voxel\\(s\\) cannot be fitted \\(voxel 4: NaN/inf\\)"):
        mrlearn.fit_ivim(s, B, bad_voxels="error")


@pytest.mark.parametrize("bvals, fragment", [
    (np.array([800.0]), "IVIM needs at least 4 distinct b-values"), (B * 1e6, "look like s/m^2"),
    (B / 1000, "look like ms/um^2"), (np.where(B == 10, -10, B), "finite and >= 0"), (B[None], "1-D"),
])
def test_fit_ivim_refuses_bvalues(bvals, fragment):
    with pytest.raises(MrlearnError, match=fragment.replace("^", "\\^").replace("(", "\\(")):
        mrlearn.fit_ivim(_ivim()[:, : np.asarray(bvals).reshape(-1).size] if np.asarray(bvals).size < 8 else _ivim(),
                         bvals)


@pytest.mark.parametrize("signals, options, fragment", [
    (np.zeros((0, 8)), {}, "V >= 1"), (_ivim()[:, :5], {}, "expected [V, 8] signals"),
    (-_ivim(), {}, "no voxel can be fitted"), (_ivim(), {"objective": "mle", "sigma": float("inf")}, "finite"),
    (_ivim(), {"objective": "mle", "sigma": float("nan")}, "finite"), (_ivim(), {"bad_voxels": "drop"}, "unknown choice"),
])
def test_fit_ivim_refuses_signals_and_options(signals, options, fragment):
    with pytest.raises(MrlearnError) as exc:
        mrlearn.fit_ivim(signals, B, **options)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------ write_volume and load_model
@pytest.mark.parametrize("kspace, fragment", [
    (np.full((1, 2, 16, 16), np.nan, np.complex64), "NaN or Inf"), (np.zeros((1, 2, 16, 16), np.complex64), "all zero"),
    (np.zeros((0, 2, 16, 16), np.complex64), "no k-space"),
])
def test_write_volume_refuses_what_a_reader_would(tmp_path, kspace, fragment):
    with pytest.raises(MrlearnError, match=fragment):
        mrlearn.write_volume(tmp_path / "v.h5", kspace)
    assert not (tmp_path / "v.h5").exists()


def test_write_volume_refuses_a_nan_target(tmp_path):
    target = np.ones((1, 16, 16), np.float32)
    target[0, 0, 0] = np.nan
    with pytest.raises(MrlearnError, match="target contains NaN"):
        mrlearn.write_volume(tmp_path / "v.h5", K[None], target=target)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from helpers_training import TINY_SET, tiny_dataset
    from mrlearn.cli import main

    data = tiny_dataset(tmp_path_factory.mktemp("api") / "data")
    out = tmp_path_factory.mktemp("api_run") / "run"
    args = ["train", "--config", "unet_demo", "--out", str(out), "--set", f"data.root={data}"]
    for item in (*TINY_SET, "trainer.max_epochs=1"):
        args += ["--set", item]
    assert main(args) == 0
    return out / "checkpoints" / "best.ckpt", data


def test_loaded_model_checks_inputs_and_outputs(trained, tmp_path):
    import torch

    ckpt, data = trained
    model = mrlearn.load_model(ckpt)
    vol = mrlearn.read_volume(next((data / "test").glob("*.h5")))
    k = vol["kspace"]
    out = model.reconstruct(k)
    assert np.isfinite(out).all()
    bad = k.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(MrlearnError, match="NaN or Inf"):
        model.reconstruct(bad)
    with pytest.raises(MrlearnError, match="not binary"):
        model.reconstruct(k, np.full(k.shape[-1], 0.5))
    with pytest.raises(MrlearnError, match="batch_size"):
        model.reconstruct(k, batch_size=0)
    with pytest.raises(MrlearnError, match="reconstructs but does not segment"):
        model.reconstruct_and_segment(k)
    assert not model.segments
    # weights that diverged: the output is refused, not returned
    ckpt_data = torch.load(ckpt, weights_only=True)
    for key, value in ckpt_data["state_dict"].items():
        if value.is_floating_point():
            ckpt_data["state_dict"][key] = value * 1e4
    huge = tmp_path / "huge.ckpt"
    torch.save(ckpt_data, huge)
    with pytest.raises(MrlearnError, match="times the norm of the zero-filled|NaN or Inf"):
        mrlearn.load_model(huge).reconstruct(k)


# -------------------------------------------------------------------------------------------- tracebacks -> one line
def test_api_calls_with_nothing_or_wrong_devices_are_one_line(tmp_path):
    for call, fragment in [
        (lambda: mrlearn.reconstruct(None), "no k-space"),
        (lambda: mrlearn.reconstruct(np.zeros((0, 16, 16), np.complex64)), "no k-space"),
        (lambda: mrlearn.reconstruct(np.array([object()] * 4)), "not a numeric array"),
        (lambda: mrlearn.reconstruct(K, method="zero-filled", device="foo"), "unknown device 'foo'"),
        (lambda: mrlearn.load_model(None), "is not a checkpoint path"),
        (lambda: mrlearn.read_volume(None), "is not a file path"),
    ]:
        with pytest.raises(MrlearnError) as exc:
            call()
        assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_cuda_without_a_gpu_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(MrlearnError, match="no CUDA device is available"):
        mrlearn.reconstruct(K, method="zero-filled", device="cuda")


def test_hdf5_links_and_broken_symlinks_are_one_line(tmp_path):
    import os

    import h5py

    from helpers_data import write_test_volume
    from mrlearn.data.dataset import list_volumes

    write_test_volume(tmp_path / "a.h5", slices=1, coils=2, h=16, w=16)
    with h5py.File(tmp_path / "soft.h5", "w") as f:
        f["kspace"] = h5py.SoftLink("/nothere")
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f["kspace"] = h5py.ExternalLink("a.h5", "/kspace")
    for name, kind in (("soft.h5", "a soft link"), ("ext.h5", "an external link")):
        with pytest.raises(MrlearnError, match=f"'kspace' is {kind}"):
            mrlearn.read_volume(tmp_path / name)
    loop = tmp_path / "loop"
    loop.mkdir()
    write_test_volume(loop / "a.h5", slices=1, coils=2, h=16, w=16)
    os.symlink("y.h5", loop / "x.h5")
    os.symlink("x.h5", loop / "y.h5")
    with pytest.raises(MrlearnError, match="symbolic link that does not resolve"):
        list_volumes(loop)


def test_max_time_must_be_seconds_or_a_duration():
    from mrlearn.config import load_config

    with pytest.raises(MrlearnError, match="is not seconds or DD:HH:MM:SS"):
        load_config("unet_demo", ["trainer.max_time=abc"])
    assert load_config("unet_demo", ["trainer.max_time=00:01:00:00"]).trainer.max_time == "00:01:00:00"
