"""fastMRI metrics: closed forms for NMSE/PSNR, SSIM equal to skimage's, the per-volume scorer, the SSIM loss."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mrlearn.errors import MrlearnError
from mrlearn.evaluation.metrics import SSIMLoss, nmse, psnr, slice_ssim, ssim
from mrlearn.evaluation.scoring import (
    VolumeCollector,
    mean_metrics,
    slice_metrics,
    summarise_volumes,
    volume_metrics,
)


def _image_like(shape, seed=0):
    """Smooth blobs + edges + noise: a stand-in for a magnitude MR image."""
    rng = np.random.default_rng(seed)
    s, h, w = shape
    y, x = np.mgrid[:h, :w]
    vol = np.zeros(shape)
    for k in range(s):
        img = np.zeros((h, w))
        for _ in range(4):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, max(h, w) / 2)
            img += rng.uniform(0.2, 1.0) * (((y - cy) ** 2 + (x - cx) ** 2) < r**2)
        img += 0.3 * np.exp(-((y - h / 2) ** 2 + (x - w / 2) ** 2) / (0.1 * h * w))
        vol[k] = img + 0.02 * rng.standard_normal((h, w))
    return np.abs(vol)


def test_nmse_closed_form():
    gt = np.ones((2, 4, 5))
    pred = gt * 0.9
    assert nmse(gt, pred) == pytest.approx(0.01, rel=1e-12)  # ||0.1||^2 / ||1||^2
    assert nmse(gt, gt) == 0.0
    gt2 = np.zeros((1, 3, 3))
    gt2[0, 1, 1] = 2.0
    pred2 = np.zeros_like(gt2)
    pred2[0, 0, 0] = 1.0
    assert nmse(gt2, pred2) == pytest.approx((4 + 1) / 4)


def test_psnr_closed_form_uses_volume_max():
    gt = np.zeros((2, 10, 10))
    gt[0, 0, 0] = 2.0  # volume max = 2 (the second slice's max is 0)
    pred = gt + 0.1
    mse = 0.01
    assert psnr(gt, pred) == pytest.approx(10 * np.log10(4 / mse), rel=1e-12)
    assert psnr(gt, pred, maxval=1.0) == pytest.approx(10 * np.log10(1 / mse), rel=1e-12)
    assert psnr(gt, gt) == np.inf


def test_metrics_are_scale_invariant_in_the_right_way():
    gt = _image_like((2, 24, 20), 1)
    pred = gt + 0.05 * np.random.default_rng(2).standard_normal(gt.shape)
    for scale in (1e-6, 1e12):
        assert nmse(gt * scale, pred * scale) == pytest.approx(nmse(gt, pred), rel=1e-9)
        assert psnr(gt * scale, pred * scale) == pytest.approx(psnr(gt, pred), rel=1e-9)
        assert ssim(gt * scale, pred * scale) == pytest.approx(ssim(gt, pred), rel=1e-7)


@pytest.mark.parametrize("shape", [(3, 23, 17), (2, 32, 32), (1, 7, 9)])
@pytest.mark.parametrize("kind", ["random", "image"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ssim_equals_skimage_with_fastmri_settings(shape, kind, dtype):
    rng = np.random.default_rng(3)
    gt = rng.random(shape) if kind == "random" else _image_like(shape, 4)
    pred = gt + 0.1 * rng.standard_normal(shape) * gt.max()
    gt, pred = gt.astype(dtype), pred.astype(dtype)
    vmax = float(gt.max())
    # fastMRI: per slice with data_range = the whole volume's max, then the mean over slices
    ref = np.mean([structural_similarity(gt[s], pred[s], data_range=vmax) for s in range(shape[0])])
    assert abs(ssim(gt, pred) - ref) < 1e-6
    per_slice = slice_ssim(gt, pred)
    for s in range(shape[0]):
        assert abs(per_slice[s] - structural_similarity(gt[s], pred[s], data_range=vmax)) < 1e-6
    assert ssim(gt, gt) == pytest.approx(1.0)


def test_ssim_with_explicit_maxval_and_single_slice():
    rng = np.random.default_rng(5)
    gt, pred = rng.random((30, 26)), rng.random((30, 26))
    assert abs(ssim(gt, pred, maxval=3.0) - structural_similarity(gt, pred, data_range=3.0)) < 1e-6


def test_volume_and_slice_metrics_equal_skimage_with_the_volume_max():
    gt = _image_like((4, 40, 34), seed=8)
    gt[2] *= 3.0  # one bright slice: the volume max differs from every other slice's max
    pred = gt + 0.05 * np.random.default_rng(9).standard_normal(gt.shape)
    vmax = gt.max()
    vm = volume_metrics(gt.astype(np.float32), pred.astype(np.float32))
    assert list(vm) == ["nmse", "psnr", "ssim"]
    g32, p32 = gt.astype(np.float32).astype(np.float64), pred.astype(np.float32).astype(np.float64)
    assert vm["psnr"] == pytest.approx(peak_signal_noise_ratio(g32, p32, data_range=g32.max()), abs=1e-9)
    ref_ssim = np.mean([structural_similarity(g, p, data_range=g32.max()) for g, p in zip(g32, p32)])
    assert vm["ssim"] == pytest.approx(ref_ssim, abs=1e-9)
    assert vm["nmse"] == pytest.approx(np.sum((g32 - p32) ** 2) / np.sum(g32**2), rel=1e-12)
    rows = slice_metrics(gt, pred)
    for g, p, row in zip(gt, pred, rows):
        assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(g, p, data_range=vmax), abs=1e-9)
        assert row["ssim"] == pytest.approx(structural_similarity(g, p, data_range=vmax), abs=1e-9)
        assert row["nmse"] == pytest.approx(np.sum((g - p) ** 2) / np.sum(g**2), rel=1e-12)


def test_volume_collector_scores_each_volume_in_slice_order_once_complete():
    vols = {"a.h5": _image_like((3, 20, 18), seed=1), "b.h5": _image_like((2, 20, 18), seed=2)}
    preds = {k: v + 0.1 * np.random.default_rng(3).random(v.shape) for k, v in vols.items()}
    c = VolumeCollector({"a.h5": 3}, slice_rows=True, examples=1, group="g")
    for s in (2, 0):  # out of order
        c.add("a.h5", s, preds["a.h5"][s], vols["a.h5"][s], 2 * vols["a.h5"][s])
    assert not c.results
    c.add("a.h5", 1, torch.from_numpy(preds["a.h5"][1]), torch.from_numpy(vols["a.h5"][1]), 2 * vols["a.h5"][1])
    assert set(c.results) == {"a.h5"}  # complete: scored at once
    for s in range(2):
        c.add("b.h5", s, preds["b.h5"][s], vols["b.h5"][s])
    results = c.finish()
    for k in vols:
        expect = volume_metrics(vols[k].astype(np.float32), preds[k].astype(np.float32))
        assert results[k] == pytest.approx(expect, rel=1e-12)
    rows = [(r["fname"], r["slice"], r["group"]) for r in c.slices]
    assert rows == [("a.h5", 0, "g"), ("a.h5", 1, "g"), ("a.h5", 2, "g"), ("b.h5", 0, "g"), ("b.h5", 1, "g")]
    assert list(c.examples) == ["a.h5"] and np.allclose(c.examples["a.h5"]["input"], 2 * vols["a.h5"][1])
    summary = summarise_volumes(results)
    assert summary["psnr"] == pytest.approx((results["a.h5"]["psnr"] + results["b.h5"]["psnr"]) / 2)
    assert mean_metrics(results.values())["volumes"] == 2 and mean_metrics([]) == {}


def test_metric_input_errors():
    with pytest.raises(MrlearnError, match="differs"):
        nmse(np.zeros((1, 8, 8)), np.zeros((1, 8, 9)))
    with pytest.raises(MrlearnError, match="smaller than"):
        ssim(np.ones((1, 5, 8)), np.ones((1, 5, 8)))
    with pytest.raises(MrlearnError, match="expected a volume"):
        psnr(np.ones((2, 2, 8, 8)), np.ones((2, 2, 8, 8)))


@pytest.mark.parametrize("shape", [(3, 23, 17), (2, 1, 32, 30)])
def test_ssim_loss_matches_numpy_ssim(shape):
    rng = np.random.default_rng(6)
    gt = _image_like((shape[0], shape[-2], shape[-1]), 7)
    pred = gt + 0.1 * rng.standard_normal(gt.shape)
    ranges = gt.reshape(gt.shape[0], -1).max(axis=1) * np.array([1.0, 1.5, 0.7][: gt.shape[0]])
    loss = SSIMLoss(reduction="none")
    t_gt = torch.tensor(gt).reshape(shape)
    t_pred = torch.tensor(pred).reshape(shape)
    out = loss(t_pred, t_gt, torch.tensor(ranges))
    for b in range(shape[0]):
        expect = 1 - ssim(gt[b], pred[b], maxval=ranges[b])
        assert abs(out[b].item() - expect) < 1e-9
    mean = SSIMLoss()(t_pred.float(), t_gt.float(), torch.tensor(ranges, dtype=torch.float32))
    assert mean.item() == pytest.approx(out.mean().item(), abs=1e-5)
    assert SSIMLoss()(t_gt, t_gt, 1.0).item() == pytest.approx(0.0, abs=1e-12)


def test_ssim_loss_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 8, 7, generator=g, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn(2, 1, 8, 7, generator=g, dtype=torch.float64)).requires_grad_(True)
    data_range = torch.tensor([1.0, 0.8], dtype=torch.float64)
    loss = SSIMLoss()
    assert torch.autograd.gradcheck(lambda p: loss(p, target, data_range), (pred,), eps=1e-6, atol=1e-6)


def test_ssim_loss_decreases_under_gradient_descent():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(1, 16, 16, generator=g, dtype=torch.float64)
    pred = torch.rand(1, 16, 16, generator=g, dtype=torch.float64).requires_grad_(True)
    loss_fn = SSIMLoss()
    opt = torch.optim.SGD([pred], lr=0.5)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(pred, target, 1.0)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_ssim_loss_errors():
    with pytest.raises(MrlearnError, match="differ"):
        SSIMLoss()(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9), 1.0)
    with pytest.raises(MrlearnError, match="smaller than the window"):
        SSIMLoss()(torch.zeros(1, 5, 8), torch.zeros(1, 5, 8), 1.0)
    with pytest.raises(MrlearnError, match="reduction"):
        SSIMLoss(reduction="sum")
