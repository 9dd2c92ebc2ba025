"""The shipped study presets keep the protocol of a fair comparison: at least 3 seeds, a declared budget policy,
early stopping (or a solver tolerance) for every trained arm, named folders, scores on a split other than the one
that selects the models, zero-filled reference rows, paper figures only where labelled; and ``--set`` can change
their seeds, grid and arms. No training here (run configs are only built)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrlearn.config import resolve_config_path
from mrlearn.study import load_study, run_config
from mrlearn.yamlfile import read_yaml_file

FAMILIES = ("mtl_contrasts", "ssl_vs_supervised", "layerwise_study", "recon_seg")
PRESETS = [f + suffix for f in FAMILIES for suffix in ("", "_gpu", "_tiny")] + ["mtl_knee_fastmri"]
REFERENCE_METHODS = ("reference",)


def _configs(name: str, tmp_path: Path):
    spec = load_study(name)
    return spec, {r.run_id: (r, run_config(spec, r, tmp_path / r.run_id)) for r in spec.runs()}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_protocol(name, tmp_path):
    spec, configs = _configs(name, tmp_path)
    assert len(spec.seeds) >= 3 and spec.budget == "to_convergence"
    assert spec.summary.get("baseline") in spec.arms
    raw = read_yaml_file(resolve_config_path(name))
    text = resolve_config_path(name).read_text()
    # the folders are named in the preset itself (inline base, or set: items)
    named = raw["base"].get("data", {}) if isinstance(raw["base"], dict) else {
        s.split("=")[0].split(".")[1]: s for s in raw.get("set", []) if s.startswith("data.")}
    assert {"train", "val", "test"} <= set(named), name
    for rid, (run, cfg) in configs.items():
        d = cfg.data
        assert len({d.train, d.val, d.test}) == 3, rid  # selection split != scored split
        method = cfg.method.get("name")
        tasks = cfg.extra.get("tasks")
        if tasks is not None:
            assert tasks.eval_split == "test", rid
        if method in REFERENCE_METHODS:
            continue
        if method in ("layerwise_convex",):  # to tolerance: a real tolerance and a cap far above typical use
            assert cfg.method["tol"] <= 1e-5 and cfg.method["max_iter"] >= 1000, rid
            if not name.endswith("_tiny"):  # gated: up to 2 neurons per pattern, as many as the network's channels
                assert 2 * cfg.method["num_patterns"] >= cfg.model["hidden"], rid
            else:
                assert cfg.method["num_patterns"] >= 8, rid
        elif method == "layerwise_greedy":  # each block to its own plateau, best epoch per block by validation
            if not name.endswith("_tiny"):
                assert cfg.method["block_patience"] >= 2 and cfg.trainer.val_every == 1, rid
                assert cfg.method["epochs_per_block"] >= 4 * cfg.method["block_patience"], rid
        else:
            es = cfg.trainer.early_stopping
            assert es is not None and es.monitor, rid
            if es.patience_samples is not None:  # a window of at least 2 validations, counted in training samples
                per_validation = (cfg.trainer.val_every_n_steps or 1) * cfg.data.batch_size
                assert es.patience_samples >= 2 * per_validation, rid
            else:
                assert es.patience >= 2, rid
            if method in ("ssdu", "ssl_distill"):  # self-supervised: selected without fully sampled images
                assert es.monitor == "val_loss", rid
    # zero-filled reference row wherever the runner can score one (layer-wise: extra.zero_filled of every run)
    if spec.runner in ("mtl", "ssl"):
        assert any(cfg.method.get("name") == "reference" and cfg.method.get("recon") == "zero-filled"
                   for _, cfg in configs.values())
    # paper figures only where labelled as the paper's
    for figure in ("33.11", "33.40", "32.71", "0.06 dB"):
        for line in text.splitlines():
            if figure in line:
                window = text[max(0, text.index(line) - 300): text.index(line) + len(line)]
                assert "paper" in window or "seed's figures" in window, (name, line)


def test_cpu_presets_set_the_protocol_sizes(tmp_path):
    spec, configs = _configs("mtl_contrasts", tmp_path)
    assert set(spec.arms) == {"zero_filled", "stl", "pooled", "transfer", "mtl_dwa_early", "mtl_equal_early",
                              "mtl_unc_middle"}
    first = next(cfg for _, cfg in configs.values()).extra["tasks"]
    assert first.tasks[0]["contrasts"] == ["PD"] and spec.grid["tasks.tasks.1.contrasts"][0] == ["PDFS"]
    spec, configs = _configs("ssl_vs_supervised", tmp_path)
    assert {"zero_filled", "cs", "supervised", "ssdu"} <= set(spec.arms)
    assert all(cfg.mask.get("fixed_per_slice") is True for _, cfg in configs.values())
    spec, configs = _configs("layerwise_study", tmp_path)
    masks = {m["name"] for m in spec.grid["mask"]}
    assert masks == {"poisson", "random"}
    e2e = next(cfg for run, cfg in configs.values() if run.arm == "end_to_end")
    assert (e2e.method["lr_step_epochs"], e2e.method["lr_gamma"]) == (10, 0.5)
    assert (e2e.model["num_blocks"], e2e.model["hidden"], e2e.model["kernel_size"]) == (3, 64, 7)  # the CPU preset's size (docs/layerwise.md)
    gpu = load_study("layerwise_study_gpu")
    assert gpu.arms["greedy_drop_f"]["model.scheme"] == "drop_f"


@pytest.mark.parametrize("name", ["ivim_labels", "ivim_labels_gpu"])
def test_ivim_presets_train_to_a_plateau_with_epsteins_budget(name, tmp_path):
    """Both SNRs, 3 seeds, a plateau of tens of epochs, at least 20 000 steps under the cap, networks from the
    groundtruth network, per-voxel fits far from their iteration cap."""
    spec, configs = _configs(name, tmp_path)
    assert len(spec.seeds) >= 3 and spec.budget == "to_convergence"
    snrs = set()
    for rid, (_, cfg) in configs.items():
        q = cfg.extra["qmri"]
        snrs.update(q.snrs)
        steps_per_epoch = -(-round(q.n_train * (1 - q.val_fraction)) // q.batch_size)
        assert cfg.trainer.max_epochs * steps_per_epoch >= 20_000, rid
        assert q.patience >= 20 and q.init_from_gt and q.fit_max_iter >= 1000, rid
        assert {"mle_fit", "net_gt", "net_mle", "net_ss", "hybrid"} <= set(q.methods), rid
    assert {15, 30} <= snrs


def test_set_changes_seeds_grid_and_arms_of_a_preset():
    sets = ["seeds=[4]", "grid.tasks.tasks.1.slice_count=[12]", "arms=[stl, mtl_dwa_early]"]
    spec = load_study("mtl_contrasts", sets)
    assert [r.run_id for r in spec.runs()] == ["stl__contrasts-PDFS__slice_count-12__seed4",
                                               "mtl_dwa_early__contrasts-PDFS__slice_count-12__seed4"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """PD and PD-FS phantom volumes (32 x 32, 2 coils, 2/1/1 volumes x 2 slices) with noiseless references."""
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    opts = SimulationOptions(anatomy="phantom", matrix=(32, 32), slices=2, subjects=(2, 1, 1), contrasts=("PD", "PDFS"),
                             coils=2)
    return Path(simulate_dataset(tmp_path_factory.mktemp("presets") / "data", opts))


def _run_tiny(name: str, data: Path, out: Path, *sets: str) -> list[dict]:
    import csv

    import torch

    from mrlearn.study import run_study

    torch.set_num_threads(1)
    spec = load_study(name, [f"data.root={data}", "seeds=[0]", *sets])
    run_study(spec, out, log=lambda s: None)
    with open(out / "study.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_mtl_tiny_preset_scores_test_split_against_both_references_with_a_zero_filled_row(phantom, tmp_path):
    rows = _run_tiny("mtl_contrasts_tiny", phantom, tmp_path / "mtl", "arms=[zero_filled, stl, mtl_dwa_early]")
    assert {(r["arm"], r["group"]) for r in rows} == {(a, g) for a in ("zero_filled", "stl", "mtl_dwa_early")
                                                      for g in ("pd", "scarce")}
    for r in rows:  # simulated data: metrics against the RSS target and against the noiseless image, side by side
        assert float(r["psnr_noiseless"]) > 0 and 0 < float(r["ssim_noiseless"]) <= 1
        if r["arm"] != "zero_filled":  # the convergence record of every trained run
            assert r["stopped_by"] in ("early_stopping", "max_steps") and int(r["steps"]) <= 40
        else:  # a reference row trains nothing: "not trained", not "unknown"
            assert r["stopped_by"] == "not_trained" and r["converged"] == ""
    assert "zero_filled: not trained" in (tmp_path / "mtl" / "report.html").read_text()
    import json

    zf = json.loads(next((tmp_path / "mtl" / "runs").glob("zero_filled__*/result.json")).read_text())
    trained = json.loads(next((tmp_path / "mtl" / "runs").glob("stl__*/result.json")).read_text())
    # the reference row is the zero-filled input that the trained runs also scored (same test volumes, same masks)
    for task in ("pd", "scarce"):
        assert zf["groups"][task]["psnr"] == pytest.approx(trained["extra"]["zero_filled"][task]["psnr"], abs=1e-9)
        assert zf["groups"][task]["volumes"] == 1  # the single test volume of each contrast, not the val volume


def test_ssl_tiny_preset_has_reference_rows_and_noiseless_columns(phantom, tmp_path):
    rows = _run_tiny("ssl_vs_supervised_tiny", phantom, tmp_path / "ssl", "data.contrasts=[PD]")
    assert {r["arm"] for r in rows} == {"zero_filled", "cs", "supervised", "ssdu"}
    assert all(float(r["psnr_noiseless"]) > 0 for r in rows)
    trained = {r["arm"]: r for r in rows if r["arm"] in ("supervised", "ssdu")}
    assert all(r["stopped_by"] in ("early_stopping", "max_steps") for r in trained.values())
    # the CS reference (5 FISTA iterations, no tolerance) is a solver stopped by its cap, and the report says so
    cs = next(r for r in rows if r["arm"] == "cs")
    assert cs["stopped_by"] == "max_iter" and cs["converged"] == "False" and cs["steps"] == "5"
    zf = next(r for r in rows if r["arm"] == "zero_filled")
    assert zf["stopped_by"] == "not_trained"
    assert "solver at its iteration cap" in (tmp_path / "ssl" / "report.html").read_text()



@pytest.mark.parametrize("name", ["demo", *FAMILIES, *(f + "_gpu" for f in FAMILIES)])
def test_image_presets_score_on_the_populations_test_subjects(name, tmp_path):
    from mrlearn.data.simulate import SimulationOptions

    default = SimulationOptions()
    assert default.subjects[2] >= 10 and default.variation  # at least 10 distinct test subjects
    _, configs = _configs(name, tmp_path)
    for _, cfg in configs.values():  # every run on the embedded population, scored on its whole test split
        assert cfg.data.root is None and cfg.data.test == "test", (name, cfg.data)
