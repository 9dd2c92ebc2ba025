"""Second reference of simulated data: ``target_noiseless`` from the file through the transform, the batch and the
one scorer (metrics against the noisy RSS target and against the noiseless image, side by side)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrlearn.data.sample import Sample, collate
from mrlearn.data.transforms import ReconTransform
from mrlearn.evaluation.metrics import psnr
from mrlearn.evaluation.scoring import NOISELESS_METRIC_NAMES, VolumeCollector, mean_metrics, summarise_volumes


def _volume(seed: int, slices: int = 3, size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(noiseless, noisy target, prediction) ``[S, h, w]``: a smooth positive image, target = image + noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    clean = np.stack([np.exp(-(xx ** 2 + yy ** 2) / (0.3 + 0.1 * s)) for s in range(slices)]).astype(np.float32)
    noisy = (clean + 0.05 * rng.standard_normal(clean.shape)).astype(np.float32)
    pred = (clean + 0.02 * rng.standard_normal(clean.shape)).astype(np.float32)
    return clean, noisy, pred


def test_collector_scores_against_both_references_with_closed_form_psnr():
    clean, noisy, pred = _volume(0)
    col = VolumeCollector(expected={"a.h5": 3}, slice_rows=True)
    for s in (2, 0, 1):  # any order
        col.add("a.h5", s, pred[s], noisy[s], noiseless=clean[s])
    res = col.results["a.h5"]
    # PSNR over the volume with the reference's own volume max as peak (float64), for both references
    for ref, key in ((noisy, "psnr"), (clean, "psnr_noiseless")):
        mse = np.mean((ref.astype(np.float64) - pred) ** 2)
        assert res[key] == pytest.approx(10 * np.log10(float(ref.max()) ** 2 / mse), abs=1e-9)
    # the prediction is closer to the noiseless image (noise 0.02) than to the noisy target (0.02 + 0.05 in quadrature)
    assert res["psnr_noiseless"] > res["psnr"] + 3
    assert {"nmse_noiseless", "ssim_noiseless"} <= set(res) and len(col.slices) == 3
    assert all("psnr_noiseless" in r for r in col.slices)
    # a perfect reconstruction of the noiseless image: NMSE 0, SSIM 1 against it, finite against the noisy target
    col2 = VolumeCollector()
    for s in range(3):
        col2.add("b.h5", s, clean[s], noisy[s], noiseless=clean[s])
    res2 = col2.finish()["b.h5"]
    assert res2["nmse_noiseless"] == 0.0 and res2["ssim_noiseless"] == pytest.approx(1.0, abs=1e-12)
    assert math.isfinite(res2["psnr"]) and math.isinf(res2["psnr_noiseless"])
    assert psnr(clean.astype(np.float64), clean.astype(np.float64)) == math.inf


def test_volumes_without_a_complete_noiseless_reference_report_only_the_target_metrics():
    clean, noisy, pred = _volume(1)
    col = VolumeCollector()
    for s in range(3):  # slice 1 has none: the volume is not scored against a partial reference
        col.add("part.h5", s, pred[s], noisy[s], noiseless=None if s == 1 else clean[s])
    for s in range(3):  # NaN-filled (a batch that mixed files with and without one) counts as absent
        col.add("nan.h5", s, pred[s], noisy[s], noiseless=np.full_like(clean[s], np.nan))
    for s in range(3):
        col.add("full.h5", s, pred[s], noisy[s], noiseless=clean[s])
    res = col.finish()
    assert not set(NOISELESS_METRIC_NAMES) & (set(res["part.h5"]) | set(res["nan.h5"]))
    assert set(NOISELESS_METRIC_NAMES) <= set(res["full.h5"])
    # means: the noiseless columns only when every volume has them
    assert not set(NOISELESS_METRIC_NAMES) & set(mean_metrics(res.values()))
    assert set(NOISELESS_METRIC_NAMES) <= set(mean_metrics([res["full.h5"]]))
    assert "psnr_noiseless" not in summarise_volumes(res) and "psnr" in summarise_volumes(res)


def test_transform_and_collate_carry_target_noiseless():
    rng = np.random.default_rng(2)
    kspace = (rng.standard_normal((2, 12, 12)) + 1j * rng.standard_normal((2, 12, 12))).astype(np.complex64)
    clean = rng.random((12, 12)).astype(np.float32)
    raw = {"kspace": kspace, "target": clean + 0.1, "target_noiseless": clean, "fname": "f.h5", "slice": 0}
    t = ReconTransform(None, recon_size=(8, 8))
    sample = t(raw)
    assert sample.target_noiseless.shape == (1, 8, 8)
    torch.testing.assert_close(sample.target_noiseless[0], torch.as_tensor(clean[2:10, 2:10]))
    plain = t({k: v for k, v in raw.items() if k != "target_noiseless"})
    assert plain.target_noiseless is None and "target_noiseless" not in plain
    batch = collate([sample, sample])
    assert batch.target_noiseless.shape == (2, 1, 8, 8)
    mixed = collate([sample, plain])  # NaN where a file has no noiseless reference
    assert torch.isnan(mixed.target_noiseless[1]).all() and torch.isfinite(mixed.target_noiseless[0]).all()
    assert collate([plain, plain]).target_noiseless is None
    with pytest.raises(ValueError, match="sens_maps"):  # other fields still must be set in all samples or none
        collate([Sample(sens_maps=torch.zeros(1), fname="a"), Sample(fname="b")])


def test_add_batch_reads_the_noiseless_field():
    clean, noisy, pred = _volume(3, slices=2, size=8)
    batch = collate([Sample(target=torch.as_tensor(noisy[s])[None], target_noiseless=torch.as_tensor(clean[s])[None],
                            has_target=True, fname="v.h5", slice=s) for s in range(2)])
    col = VolumeCollector()
    col.add_batch(batch, torch.as_tensor(pred))
    res = col.finish()["v.h5"]
    ref = VolumeCollector()
    for s in range(2):
        ref.add("v.h5", s, pred[s], noisy[s], noiseless=clean[s])
    assert res == ref.finish()["v.h5"]


def test_score_batches_is_the_collector_over_a_loader():
    from mrlearn.evaluation.scoring import score_batches

    clean, noisy, pred = _volume(4, slices=4, size=8)
    batches = [collate([Sample(target=torch.as_tensor(noisy[s])[None], target_noiseless=torch.as_tensor(clean[s])[None],
                               zero_filled=torch.as_tensor(noisy[s])[None], has_target=True, fname="w.h5", slice=s)
                        for s in (2 * b, 2 * b + 1)]) for b in range(2)]
    outputs = iter([torch.as_tensor(pred[:2]), torch.as_tensor(pred[2:])])
    groups, rows, examples = score_batches(lambda batch: next(outputs), batches, group="g")
    ref = VolumeCollector()
    for s in range(4):
        ref.add("w.h5", s, pred[s], noisy[s], noiseless=clean[s])
    assert groups["g"] == mean_metrics(ref.finish().values()) and groups["g"]["volumes"] == 1
    assert [r["slice"] for r in rows] == [0, 1, 2, 3] and {r["group"] for r in rows} == {"g"}
    assert set(examples["g"]) == {"target", "input", "output", "maxval"}  # maxval: the volume's, for scores under images
    np.testing.assert_array_equal(examples["g"]["output"], pred[2])
