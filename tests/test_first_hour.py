"""What a first-time user meets: the Python API reconstructs a fully sampled file as the CLI does (same mask, same
image, same score); ``mrlearn configs`` lists every shipped config with its description."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mrlearn
from helpers_training import TINY_SET, tiny_dataset
from mrlearn.cli import main
from mrlearn.data.fastmri import read_reconstruction, read_target
from mrlearn.errors import MrlearnError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = tiny_dataset(tmp_path_factory.mktemp("first_hour") / "data")
    out = tmp_path_factory.mktemp("first_hour_run") / "run"
    args = ["train", "--config", "unet_demo", "--out", str(out), "--set", f"data.root={data}"]
    for item in (*TINY_SET, "trainer.max_epochs=1"):
        args += ["--set", item]
    assert main(args) == 0
    return out / "checkpoints" / "best.ckpt", data


def test_api_and_cli_give_the_same_reconstruction_and_score(trained, tmp_path, capsys):
    ckpt, data = trained
    out = tmp_path / "recon"
    assert main(["reconstruct", "--checkpoint", str(ckpt), "--data", str(data / "test"), "--out", str(out)]) == 0
    assert main(["evaluate", "--target", str(data / "test"), "--pred", str(out), "--out", str(tmp_path / "m")]) == 0
    scores = {r["volume"]: r for r in json.loads((tmp_path / "m" / "metrics.json").read_text())["volumes"]}
    model = mrlearn.load_model(ckpt)
    for path in sorted((data / "test").glob("*.h5")):
        cli = read_reconstruction(out / path.name)
        target = read_target(path)
        from_file = model.reconstruct_file(path)
        from_array = model.reconstruct(mrlearn.read_volume(path)["kspace"], name=path.name)
        np.testing.assert_allclose(from_file, cli, rtol=1e-5, atol=1e-6 * float(cli.max()))
        np.testing.assert_allclose(from_array, cli, rtol=1e-5, atol=1e-6 * float(cli.max()))
        assert mrlearn.psnr(target, from_array) == pytest.approx(scores[path.name]["psnr"], abs=1e-3)
        # all of k-space is an easier, other problem: asked for explicitly, and it scores differently
        full = model.reconstruct_file(path, undersample=False)
        assert abs(mrlearn.psnr(target, full) - mrlearn.psnr(target, from_file)) > 0.1
        np.testing.assert_allclose(model.reconstruct(mrlearn.read_volume(path)["kspace"], undersample=False), full,
                                   rtol=1e-5, atol=1e-6 * float(full.max()))
    with pytest.raises(MrlearnError, match="is not a file name"):
        model.reconstruct(mrlearn.read_volume(path)["kspace"], name="")


def test_api_keeps_the_acquired_columns_of_zero_padded_kspace(trained):
    """Fully sampled k-space with fastMRI's zero-padded edge columns is still fully sampled: the training mask is
    applied inside the acquired block, which is what the CLI does with a header's encoding limits."""
    from mrlearn.api.model import acquired_block

    ckpt, data = trained
    model = mrlearn.load_model(ckpt)
    k = mrlearn.read_volume(next((data / "test").glob("*.h5")))["kspace"].copy()
    k[..., :3] = 0
    k[..., -2:] = 0
    assert acquired_block((k[0] != 0).any(axis=0)) == (3, k.shape[-1] - 2)
    undersampled = k * (np.arange(k.shape[-1]) % 2 == 0)  # every other column: not a block
    assert acquired_block((undersampled[0] != 0).any(axis=0)) is None
    padded = model.reconstruct(k, name="x.h5")
    assert not np.allclose(padded, model.reconstruct(k, name="x.h5", undersample=False))
    np.testing.assert_allclose(model.reconstruct(undersampled, name="x.h5"),
                               model.reconstruct(undersampled, name="y.h5"))  # its own samples: no seed involved


def test_evaluate_skip_missing_scores_the_rest_and_lists_what_it_left_out(tmp_path, capsys):
    from mrlearn.data.fastmri import write_reconstruction, write_volume

    rng = np.random.default_rng(0)
    targets, preds = tmp_path / "t", tmp_path / "p"
    truth = {}
    for name in ("a.h5", "b.h5"):
        t = rng.random((2, 16, 16)).astype(np.float32) + 0.5
        truth[name] = t
        k = np.fft.fft2(t).astype(np.complex64)[:, None]
        write_volume(targets / name, k, target=t, acquisition="CORPD_FBK")
        write_reconstruction(preds / name, t * 0.9)
    write_reconstruction(preds / "stray.h5", truth["a.h5"])  # a prediction whose target is not in the folder
    args = ["evaluate", "--target", str(targets), "--pred", str(preds), "--out", str(tmp_path / "m")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "stray.h5: no target file of that name" in err and "--skip-missing" in err
    assert main([*args, "--skip-missing"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 prediction(s) without a target (--skip-missing): stray.h5" in captured.err
    report = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert report["skipped_predictions"] == ["stray.h5"] and [v["volume"] for v in report["volumes"]] == ["a.h5", "b.h5"]
    for row in report["volumes"]:  # the scored ones are scored as without the stray file
        assert row["nmse"] == pytest.approx(0.01, rel=1e-5)


def test_configs_lists_every_shipped_config_with_its_description(capsys):
    from pathlib import Path

    from mrlearn.config import load_config
    from mrlearn.study import load_study

    shipped = sorted((Path(mrlearn.__file__).parent / "configs").glob("*.yaml"))
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    studies = out.split("Study configs")[1]
    for path in shipped:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and 20 <= len(first) <= 102, path.name  # a one-line description on top
        lines = [line for line in out.splitlines() if line.split()[:1] == [path.stem]]
        assert len(lines) == 1 and lines[0].endswith(first[2:]), path.name
        if path.stem in studies:  # listed under its kind, and that kind loads
            assert load_study(path.stem).name
        else:
            assert load_config(path.stem).name
    assert "  demo " in studies and "  unet_fastmri_knee " in out.split("Study configs")[0]
    assert main(["configs", "--kind", "study"]) == 0
    assert "unet_demo" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "mrlearn configs" in capsys.readouterr().out
