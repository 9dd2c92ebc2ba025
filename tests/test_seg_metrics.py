"""Segmentation metrics and losses: closed forms, medpy as reference (when installed), empty-map rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mrlearn.evaluation.segmentation import (dice_per_class, hd95, mean_foreground, percentile, surface,
                                             surface_distances, volume_scores)
from mrlearn.recon_seg.scoring import DiceCollector
from mrlearn.seg.losses import SegLoss, cross_entropy, soft_dice_loss


def square(n: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=bool)
    m[top:top + side, left:left + side] = True
    return m


def test_dice_of_shifted_squares_is_the_overlap_fraction():
    a, b = square(20, 4, 4, 8), square(20, 4, 7, 8)  # shifted by 3 columns: overlap 8 x 5
    labels_a, labels_b = a.astype(int), b.astype(int)
    d = dice_per_class(labels_a, labels_b, 2)
    assert d[1] == pytest.approx((8 - 3) / 8)
    assert d[0] == pytest.approx(2 * (400 - 64 - 24) / (2 * (400 - 64)))  # background: 400-64 each, union 64+24


def test_dice_empty_rules_and_ignore_index():
    zeros = np.zeros((5, 5), dtype=int)
    d = dice_per_class(zeros, zeros, 3)
    assert d[0] == 1.0 and math.isnan(d[1]) and math.isnan(d[2])  # absent in both: NaN
    pred = zeros.copy()
    pred[0, 0] = 2
    assert dice_per_class(pred, zeros, 3)[2] == 0.0  # predicted only: 0
    target = np.full((5, 5), -1)
    target[2, 2] = 1
    pred = np.ones((5, 5), dtype=int)  # wrong everywhere except the one labelled pixel: ignored pixels do not count
    assert dice_per_class(pred, target, 2)[1] == 1.0
    assert mean_foreground([0.1, 0.5, math.nan, 0.7]) == pytest.approx(0.6)


def test_hd95_of_two_pixels_uses_the_spacing_per_axis():
    a, b = np.zeros((8, 10), bool), np.zeros((8, 10), bool)
    a[2, 3] = b[5, 7] = True  # 3 rows and 4 columns apart
    assert hd95(a, b, spacing=(2.0, 0.5)) == pytest.approx(math.sqrt(6.0 ** 2 + 2.0 ** 2))
    assert hd95(a, b) == pytest.approx(5.0)


def test_hd95_of_concentric_squares_matches_the_closed_form_distance_set():
    s, m = 6, 3  # inner side s, margin m: outer side s + 2m
    inner, outer = square(24, 6, 6, s), square(24, 3, 3, s + 2 * m)
    # inner surface -> outer surface: every one of the 4s - 4 pixels is m away (the facing edge)
    assert np.allclose(surface_distances(inner, outer), m) and surface(inner).sum() == 4 * s - 4
    # outer -> inner: per side s pixels facing the inner edge (m), per corner region 2 (m - 1) pixels at
    # sqrt(m^2 + j^2), j = 1..m-1, and the corner pixel at m sqrt 2
    closed = [m] * (4 * s) + [math.sqrt(m * m + j * j) for j in range(1, m) for _ in range(8)] + [m * math.sqrt(2)] * 4
    assert np.allclose(np.sort(surface_distances(outer, inner)), np.sort(closed))
    pooled = np.concatenate([[m] * (4 * s - 4), closed])
    assert hd95(inner, outer) == pytest.approx(np.percentile(pooled, 95))
    assert hd95(inner, outer, pooled=False) == pytest.approx(max(m, np.percentile(closed, 95)))  # MONAI's form
    d = dice_per_class(inner.astype(int) + outer.astype(int), outer.astype(int) * 2, 3)  # labels: 2 = inner, 1 = ring
    assert d[2] == pytest.approx(2 * s * s / (s * s + (s + 2 * m) ** 2))


def test_hd95_empty_rules_and_inf_percentiles():
    empty, one = np.zeros((6, 6), bool), square(6, 1, 1, 3)
    assert math.isnan(hd95(empty, empty)) and hd95(one, empty) == math.inf and hd95(empty, one) == math.inf
    assert percentile(np.array([1.0, 2.0, 3.0]), 50) == 2.0
    assert percentile(np.array([1.0] * 99 + [math.inf]), 95) == pytest.approx(1.0)
    assert percentile(np.array([1.0] * 9 + [math.inf]), 95) == math.inf and math.isnan(percentile(np.zeros(0), 95))


def test_volume_scores_pool_the_slices_in_plane():
    pred = np.zeros((2, 16, 16), dtype=np.uint8)
    target = np.zeros_like(pred)
    pred[0, 2:8, 2:8], target[0, 2:8, 3:9] = 1, 1  # shift 1 column in slice 0
    pred[1, 4:10, 4:10], target[1, 4:10, 4:10] = 1, 1  # identical in slice 1
    scores = volume_scores(pred, target, 3, spacing=(1.0, 0.5))
    pooled = np.concatenate([surface_distances(pred[0] == 1, target[0] == 1, (1.0, 0.5)),
                             surface_distances(target[0] == 1, pred[0] == 1, (1.0, 0.5)), np.zeros(2 * 20)])
    assert scores["hd95"][1] == pytest.approx(np.percentile(pooled, 95))
    assert scores["dice"][1] == pytest.approx(2 * (30 + 36) / (72 + 72)) and math.isnan(scores["hd95"][2])
    target[1, 0, 0] = 2  # class 2 only in the target: no predicted surface anywhere
    assert volume_scores(pred, target, 3)["hd95"][2] == math.inf


def test_against_medpy_on_random_blobs():
    binary = pytest.importorskip("medpy.metric.binary")
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    for trial in range(5):
        a = gaussian_filter(rng.standard_normal((40, 36)), 3) > 0.05
        b = gaussian_filter(rng.standard_normal((40, 36)), 3) > 0.05
        spacing = (0.7, 1.3) if trial % 2 else (1.0, 1.0)
        assert hd95(a, b, spacing) == pytest.approx(binary.hd95(a, b, voxelspacing=spacing), rel=1e-12)
        assert dice_per_class(a.astype(int), b.astype(int), 2)[1] == pytest.approx(binary.dc(a, b), rel=1e-12)


def test_cross_entropy_ignores_unlabelled_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    labels = torch.randint(0, 4, (2, 5, 5))
    labels[0] = -1
    expected = F.cross_entropy(logits[1:], labels[1:])
    assert torch.allclose(cross_entropy(logits, labels), expected)
    none = cross_entropy(logits, torch.full((2, 1, 5, 5), -1))
    none.backward()
    assert none.item() == 0.0 and torch.all(logits.grad == 0)


def test_soft_dice_closed_forms():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2] = 1  # 8 pixels of class 1, 8 of class 0; class 2 absent
    uniform = torch.zeros(1, 3, 4, 4)  # p = 1/3 everywhere
    d1 = (2 * 8 / 3 + 1e-5) / (16 / 3 + 8 + 1e-5)
    d2 = (0 + 1e-5) / (16 / 3 + 1e-5)
    assert soft_dice_loss(uniform, labels).item() == pytest.approx(1 - (d1 + d2) / 2, rel=1e-6)
    perfect = 50.0 * F.one_hot(labels, 3).movedim(-1, 1).float()
    assert soft_dice_loss(perfect, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert SegLoss("ce_dice")(uniform, labels).item() == pytest.approx(math.log(3) + 1 - (d1 + d2) / 2, rel=1e-6)


def test_bad_loss_name_is_one_line():
    from mrlearn.errors import MrlearnError

    with pytest.raises(MrlearnError, match="method.seg_loss: unknown segmentation loss 'focal'; choose one of"):
        SegLoss("focal")


def test_dice_collector_means_over_volumes_then_foreground_classes():
    c = DiceCollector(3)
    target = np.array([[0, 1], [1, 2]])
    c.add("a.h5", np.array([[0, 1], [1, 2]]), target)  # perfect: Dice 1, 1, 1
    c.add("b.h5", np.array([[0, 1], [0, 0]]), np.array([[0, 1], [1, 0]]))  # class 1: 2*1/(1+2); class 2 absent
    c.add("b.h5", np.zeros((2, 2), int), np.full((2, 2), -1))  # unlabelled slice: nothing
    s = c.summary()
    assert s["per_class"][1] == pytest.approx((1 + 2 / 3) / 2) and s["per_class"][2] == 1.0
    assert s["dice"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_pixel_spacing_comes_from_the_recon_field_of_view(tmp_path):
    from mrlearn.data.fastmri import make_ismrmrd_header, write_volume
    from mrlearn.evaluation.seg_scoring import pixel_spacing_mm

    kspace = np.ones((1, 1, 16, 12), np.complex64)
    header = make_ismrmrd_header((16, 12), (8, 12), fov_mm=(32.0, 18.0, 3.0))  # recon FOV 16 x 18 mm
    path = write_volume(tmp_path / "v.h5", kspace, target=np.ones((1, 8, 12), np.float32), header=header,
                        acquisition="PD")
    assert pixel_spacing_mm(path) == pytest.approx((2.0, 1.5))
