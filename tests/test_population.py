"""The embedded population: distinct subjects, diffeomorphic deformations, labels, subject-disjoint splits."""

from __future__ import annotations

from dataclasses import replace

import h5py
import numpy as np
import pytest

from mrlearn import read_volume
from mrlearn.data.simulate import SimulationOptions, load_manifest, simulate_dataset
from mrlearn.data.simulate.anatomy import mni_anatomy
from mrlearn.data.simulate.contrasts import PROTOCOLS, tissue_signals
from mrlearn.data.simulate.deform import Grid, exp_velocity, jacobian_determinant, smooth_random_field
from mrlearn.data.simulate.phantom import phantom_anatomy
from mrlearn.data.simulate.slabs import Slab, anatomy_layout, slab_points
from mrlearn.data.simulate.subject import (
    AXIS_SCALE_SD, BIAS_PEAK, DEFORM_SPACING_MM, RMS_DISPLACEMENT_MM, ROTATION_SD_DEG, SCALE_SD, TRANSLATION_MM,
    VENTRICLE_SHIFT_MM, Lesion, SubjectAnatomy, _template_info, draw_subject, ventricle_volume_ratio,
)
from mrlearn.data.simulate.texture import brain_spectrum_slopes
from mrlearn.data.simulate.tissue import (
    SEGMENTATION_LABELS, TISSUE_INDEX, TISSUE_SD, TISSUES, TRUNCATE_SD, segmentation_from_fractions,
)

TINY = SimulationOptions(anatomy="phantom", matrix=(32, 32), coils=4, slices=(3, 2, 2), subjects=(3, 2, 2),
                         contrasts=("PD", "T2", "FLAIR"), seed=3, lesion_fraction=0.5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return simulate_dataset(tmp_path_factory.mktemp("pop") / "ds", TINY)


@pytest.fixture(scope="module")
def mni():
    return mni_anatomy(2)


def _brain(fractions: np.ndarray) -> np.ndarray:
    return (fractions[TISSUE_INDEX["gm"]] + fractions[TISSUE_INDEX["wm"]]) > 0.5


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


# -------------------------------------------------------------------------------------------------- deformations
def test_scaling_and_squaring_matches_the_closed_form_of_a_linear_field():
    # v(x) = -a x flows to x -> exp(-a) x: displacement (exp(-a) - 1) x, Jacobian exp(-3a). Scaling and squaring
    # with n squarings starts from the first-order step 1 - a / 2^n, whose relative error a^2 / 2^(n+1) per axis
    # (3.5e-4 at a = 0.3, n = 7) compounds to about 1e-3 in the determinant
    grid = Grid((21, 21, 21), (-40.0, -40.0, -40.0), 4.0)
    pts = grid.points()
    u = exp_velocity(np.moveaxis(-0.3 * pts, -1, 0).astype(np.float32), grid)
    inner = (slice(3, -3),) * 3
    np.testing.assert_allclose(np.moveaxis(u, 0, -1)[inner], ((np.exp(-0.3) - 1.0) * pts)[inner], atol=0.02)
    np.testing.assert_allclose(jacobian_determinant(u, grid.spacing_mm)[inner], np.exp(-0.9), rtol=2e-3)


@pytest.mark.parametrize("seed", range(4))
def test_subject_deformations_are_diffeomorphic(mni, seed):
    s = draw_subject(mni, seed, 7)
    jac = jacobian_determinant(s.displacement, s.grid.spacing_mm)
    assert jac.min() > 0.0, jac.min()  # invertible everywhere, no folding
    assert s.stats["jacobian_min"] == pytest.approx(float(jac.min()), abs=1e-4)
    assert np.linalg.det(s.rotation) == pytest.approx(1.0) and (s.scale > 0).all()  # pose keeps orientation


def test_extreme_velocity_still_integrates_to_positive_jacobian(mni):
    # twice the largest amplitude the population draws, plus the largest ventricle growth
    info = _template_info(mni)
    grid = Grid.covering(mni.bounds_mm, DEFORM_SPACING_MM)
    v = smooth_random_field(grid, 15.0, np.random.default_rng(0)) * np.float32(2 * RMS_DISPLACEMENT_MM[1])
    v += np.float32(VENTRICLE_SHIFT_MM[1]) * info.ventricle_shift
    assert jacobian_determinant(exp_velocity(v, grid), grid.spacing_mm).min() > 0.0


# ------------------------------------------------------------------------------------------- distinct subjects
def test_same_seed_same_subject_other_seed_other_subject(mni):
    layout = anatomy_layout(mni)
    pts = slab_points(layout, Slab("axial", (10.0, 20.0)), (96, 96), 2.0)
    a = draw_subject(mni, 0, 1).fractions(pts)
    np.testing.assert_array_equal(a, draw_subject(mni, 0, 1).fractions(pts))
    template = _brain(draw_subject(mni, 0, 1, variation=False).fractions(pts))
    others = [_brain(draw_subject(mni, seed, k).fractions(pts)) for seed, k in ((0, 2), (1, 1), (5, 0))]
    dice = [_dice(_brain(a), b) for b in others] + [_dice(_brain(a), template)]
    # measured 0.81-0.86 between subjects at 2 mm (brain masks of matching slices); identical would be 1
    assert max(dice) < 0.92, dice
    assert _dice(template, _brain(draw_subject(mni, 9, 9, variation=False).fractions(pts))) == 1.0


def test_subject_parameters_stay_in_their_ranges(mni):
    for k in range(6):
        s = draw_subject(mni, 2, k, lesion_fraction=1.0)
        for drawn, mean, sd in zip(s.tissues, TISSUES, TISSUE_SD):
            for v, m, d in zip((drawn.pd, drawn.t1_ms, drawn.t2_ms), (mean.pd, mean.t1_ms, mean.t2_ms), sd):
                assert abs(v - m) <= TRUNCATE_SD * d + 1e-3, (drawn, mean)
        assert np.all(np.abs(s.rotation_deg) <= 2 * np.asarray(ROTATION_SD_DEG) + 1e-9)
        assert np.all(np.abs(s.translation_mm) <= TRANSLATION_MM)
        lo = (1 - 2 * SCALE_SD) * (1 - 2 * AXIS_SCALE_SD)
        hi = (1 + 2 * SCALE_SD) * (1 + 2 * AXIS_SCALE_SD)
        assert np.all((lo <= s.scale) & (s.scale <= hi))
        assert VENTRICLE_SHIFT_MM[0] <= s.stats["ventricle_shift_mm"] <= VENTRICLE_SHIFT_MM[1]
        assert BIAS_PEAK[0] - 1e-4 <= s.stats["bias_peak"] <= BIAS_PEAK[1] + 1e-4
        # inter-subject displacements of a few mm (REFERENCE section 13)
        assert 1.0 <= s.stats["rms_displacement_mm"] <= 5.0 and s.stats["max_displacement_mm"] <= 15.0
        assert s.lesions and all(1.5 - 1e-6 <= r <= 6.0 + 1e-6 for les in s.lesions for r in les.radii_mm)


def test_ventricle_wall_shift_sets_the_ventricle_volume(mni):
    info = _template_info(mni)
    assert 10_000 < info.ventricle_mask.sum() * 8 < 60_000  # template lateral ventricles: 10-60 ml
    assert ventricle_volume_ratio(draw_subject(mni, 0, 0, variation=False), info) == pytest.approx(1.0)
    shift, ratio = [], []
    for k in range(8):
        s = draw_subject(mni, 4, k)
        shift.append(s.stats["ventricle_shift_mm"])
        ratio.append(s.stats["ventricle_volume_ratio"])
    # measured 0.92 (ratios 0.91-2.06 for shifts 0.2-1.8 mm); pose, size and the random field spread the rest
    assert np.corrcoef(shift, ratio)[0, 1] > 0.8, (shift, ratio)
    assert max(ratio) > 1.5 and min(ratio) < 1.2


def test_fine_structure_restores_high_frequencies(mni):
    layout = anatomy_layout(mni)
    pts = slab_points(layout, Slab("axial", (15.0,)), (128, 128), 1.875)
    slopes = {}
    for variation in (False, True):
        images, masks = [], []
        for k in range(3):
            s = draw_subject(mni, 0, k, variation=variation)
            f = s.fractions(pts)
            images.append(np.tensordot(tissue_signals(PROTOCOLS["T1"], s.tissues), f, axes=(0, 0))[0])
            masks.append(_brain(f)[0])
        slopes[variation] = brain_spectrum_slopes(images, masks, 1.875)
    low_t, high_t = slopes[False]
    low_s, high_s = slopes[True]
    # the template's spectrum steepens by > 2.5 above 1/8 mm^-1; a subject's continues within 1.5 of its power law
    assert high_t - low_t < -2.5 and high_s - low_s > -1.5, slopes


# ------------------------------------------------------------------------------------------------ files, labels
def test_splits_hold_disjoint_subjects_and_contrasts_are_coregistered(tiny):
    m = load_manifest(tiny)
    by_split = {s: {f["subject"] for f in m["files"] if f["split"] == s} for s in ("train", "val", "test")}
    assert [len(by_split[s]) for s in ("train", "val", "test")] == [3, 2, 2]
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"])
    for sub in m["subjects"]:
        files = [f for f in m["files"] if f["subject"] == sub["subject_id"]]
        assert {f["acquisition"] for f in files} == {"PD", "T2", "FLAIR"}
        assert len({tuple(f["slice_positions_mm"]) for f in files}) == 1  # one slab per subject
        vols = [read_volume(tiny / f["path"]) for f in files]
        assert all(v["patient_id"] == sub["subject_id"] for v in vols)
        for v in vols[1:]:
            np.testing.assert_array_equal(v["segmentation"], vols[0]["segmentation"])
        assert vols[0]["segmentation"].shape == (sub["slices"], 32, 32)
        assert len({round(f["snr"], 6) for f in files}) == 3  # each acquisition its own noise level


def test_a_subject_does_not_depend_on_the_split_counts(tiny, tmp_path):
    other = simulate_dataset(tmp_path / "o", replace(TINY, subjects=(2, 0, 0), contrasts=("T2",)))
    a = read_volume(tiny / "train" / "T2_sub-0001_coronal.h5")
    b = read_volume(other / "train" / "T2_sub-0001_coronal.h5")
    np.testing.assert_array_equal(a["kspace"], b["kspace"])
    shifted = simulate_dataset(tmp_path / "s", replace(TINY, subjects=(1, 0, 0), first_subject=1, contrasts=("T2",)))
    np.testing.assert_array_equal(read_volume(shifted / "train" / "T2_sub-0001_coronal.h5")["kspace"], a["kspace"])


def test_labels_agree_with_the_tissue_fractions_and_the_images(tiny):
    m = load_manifest(tiny)
    assert {int(k): v for k, v in m["segmentation_labels"].items()} == SEGMENTATION_LABELS
    base = phantom_anatomy()
    layout = anatomy_layout(base)
    means = {c: {t: [] for t in ("csf", "gm", "wm")} for c in ("T2", "FLAIR")}
    for sub in m["subjects"]:
        subject = draw_subject(base, TINY.seed, sub["index"], lesion_fraction=TINY.lesion_fraction)
        slab = Slab(sub["orientation"], tuple(next(f for f in m["files"] if f["subject"] == sub["subject_id"])["slice_positions_mm"]))
        f = subject.fractions(slab_points(layout, slab, (32, 32), m["geometry"]["pixel_mm"]))
        path = next(tiny / x["path"] for x in m["files"] if x["subject"] == sub["subject_id"] and x["acquisition"] == "T2")
        with h5py.File(path, "r") as h:
            seg = h["segmentation"][()]
        np.testing.assert_array_equal(seg, segmentation_from_fractions(f))
        labelled = seg > 0
        chosen = np.take_along_axis(f, seg[None].astype(np.int64) - 1, axis=0)[0]
        assert (chosen[labelled] >= f.max(axis=0)[labelled] - 1e-6).all()  # each label is the largest fraction
        assert (f.sum(axis=0)[~labelled] < 0.5).all() and (f.sum(axis=0)[labelled] >= 0.5).all()
        for c in means:
            target = read_volume(str(path).replace("/T2_", f"/{c}_"))["target"]
            for t in ("csf", "gm", "wm"):
                pure = seg == TISSUE_INDEX[t] + 1
                means[c][t].append(float(target[pure].mean()))
    t2 = {t: np.mean(v) for t, v in means["T2"].items()}
    flair = {t: np.mean(v) for t, v in means["FLAIR"].items()}
    assert t2["csf"] > t2["gm"] > t2["wm"] and flair["csf"] < flair["wm"]  # labels sit on the right intensities
    assert sum(bool(s["lesions"]) for s in m["subjects"]) >= 1


def test_a_lesion_turns_white_matter_into_lesion(mni):
    plain = draw_subject(mni, 0, 0, variation=False)
    centre = (28.0, -20.0, 30.0)  # deep white matter
    with_lesion = SubjectAnatomy(mni, "sub-x", centre_mm=plain.centre_mm, lesions=(Lesion(centre, (4.0, 4.0, 4.0)),))
    pts = np.array([centre, (centre[0] + 8.0, centre[1], centre[2])], dtype=np.float32)
    before, after = plain.fractions(pts), with_lesion.fractions(pts)
    wm, les = TISSUE_INDEX["wm"], TISSUE_INDEX["lesion"]
    assert after[les, 0] == pytest.approx(before[wm, 0]) and after[wm, 0] == 0.0  # inside: all its WM is lesion
    np.testing.assert_array_equal(after[:, 1], before[:, 1])  # 8 mm away: untouched
    np.testing.assert_allclose(after.sum(axis=0), before.sum(axis=0), rtol=1e-6)


def test_lesions_are_hyperintense_on_flair_and_t2():
    s = TISSUES[TISSUE_INDEX["lesion"]]
    for c in ("T2", "FLAIR"):
        sig = tissue_signals(PROTOCOLS[c])
        assert sig[TISSUE_INDEX["lesion"]] > 1.5 * sig[TISSUE_INDEX["wm"]], (c, s)
    sig = tissue_signals(PROTOCOLS["T1"])
    assert sig[TISSUE_INDEX["lesion"]] < sig[TISSUE_INDEX["wm"]]
