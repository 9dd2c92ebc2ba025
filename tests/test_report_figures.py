"""Report figures and the one std: error maps share one colour scale with a colour bar, the scores under the example
images equal the metric functions' values, training curves mark best and stop and keep loss kinds apart, and every
table's ± is the sample std (ddof = 1)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from mrlearn.evaluation import metrics
from mrlearn.evaluation.figures import Curve, ExampleSlice, curves_figure, example_figure, slice_scores
from mrlearn.evaluation.spread import mean_std, pm, sample_std, std_note


def _images(seed: int = 0):
    rng = np.random.default_rng(seed)
    target = rng.random((2, 24, 20)) + 1.0  # a 2-slice volume; the shown slice is slice 1
    good = target + 0.02 * rng.standard_normal(target.shape)
    bad = target + 0.4 * rng.standard_normal(target.shape)
    return target, good, bad


def _error_axes(fig):
    return [ax for ax in fig.axes if ax.get_title().startswith("|error|")]


def test_error_maps_share_one_scale_with_one_colour_bar_and_scores_match_the_metrics():
    import matplotlib.pyplot as plt

    target, good, bad = _images()
    shown = [ExampleSlice("vol_slice1", target[1], [("U-Net", good[1]), ("zero-filled", bad[1])],
                          float(target.max())),
             ExampleSlice("vol2_slice0", target[0], [("U-Net", good[0]), ("zero-filled", bad[0])], float(target.max()))]
    fig = example_figure(shown)
    errs = _error_axes(fig)
    assert len(errs) == 4
    limits = {ax.images[0].get_clim() for ax in errs}
    assert len(limits) == 1  # one colour scale for every error map of the figure
    lo, hi = limits.pop()
    assert lo == 0.0 and hi == pytest.approx(max(np.abs(x - target).max() for x in (good, bad)))
    # the error colour bar: a colour-bar axis bound to an error map, exactly one
    bars = [ax for ax in fig.axes if "|error|" in ax.get_ylabel()]
    assert len(bars) == 1
    # smaller error, darker map: the U-Net's mean error is a fraction of zero-filled's on the same scale
    unet, zf = (np.mean(ax.images[0].get_array()) for ax in errs[:2])
    assert unet < 0.2 * zf
    # under each method image: PSNR and SSIM of that slice with the volume max, as the slice rows of a study
    scored = [ax for ax in fig.axes if ax.get_xlabel().startswith("PSNR")]
    assert [ax.get_title() for ax in scored] == ["U-Net", "zero-filled"] * 2  # every method image, no other
    from mrlearn.evaluation.scoring import slice_metrics

    for ax, (vol_slice, pred) in zip(scored, [(1, good), (1, bad), (0, good), (0, bad)]):
        row = slice_metrics(target, pred)[vol_slice]
        assert ax.get_xlabel() == f"PSNR {row['psnr']:.2f} dB / SSIM {row['ssim']:.4f}"
    texts = [scored[0].get_xlabel()]
    direct = slice_scores(target[1], good[1], float(target.max()))
    assert direct["psnr"] == pytest.approx(metrics.psnr(target[1], good[1], float(target.max())))
    assert direct["ssim"] == pytest.approx(metrics.ssim(target[1], good[1], float(target.max())))
    assert texts[0] == f"PSNR {direct['psnr']:.2f} dB / SSIM {direct['ssim']:.4f}"
    plt.close(fig)


def test_curves_mark_best_and_stop_and_separate_loss_kinds():
    import matplotlib.pyplot as plt

    hist_img = [{"epoch": e, "step": 10 * (e + 1), "train_loss": 0.5 / (e + 1), "val_psnr": p, "val_ssim": s}
                for e, (p, s) in enumerate([(20.0, 0.6), (23.0, 0.7), (22.0, 0.68)])]
    hist_k = [{"epoch": e, "step": 5 * (e + 1), "train_loss": 900.0 / (e + 1), "val_psnr": 18.0 + e}
              for e in range(4)]
    fig = curves_figure([Curve("U-Net", hist_img, "image domain", best_step=20, stop_step=30,
                               stopped_by="early_stopping"),
                         Curve("SSDU", hist_k, "k-space", best_step=20, stop_step=20, stopped_by="max_epochs")])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["training loss: image domain", "training loss: k-space"]  # two loss axes, never one
    img_ax, k_ax, psnr_ax = fig.axes[0], fig.axes[1], fig.axes[2]
    assert {ln.get_label() for ln in img_ax.lines} & {"SSDU"} == set()  # the k-space loss is not on the image axis
    marks = {ln.get_label(): (ln.get_marker(), tuple(ln.get_xydata()[0])) for ln in psnr_ax.lines
             if ln.get_marker() in ("*", "X")}
    assert marks["U-Net: best (step 20)"] == ("*", (20.0, 23.0))  # the best validation point
    assert marks["U-Net: stop (step 30, early_stopping)"] == ("X", (30.0, 22.0))
    assert marks["SSDU: stop (step 20, max_epochs)"] == ("X", (20.0, 21.0))
    plt.close(fig)


def test_one_std_definition_sample_ddof_1():
    values = [30.0, 31.0, 33.5]
    assert sample_std(values) == pytest.approx(np.std(values, ddof=1))
    assert sample_std(values) != pytest.approx(np.std(values))  # not the population std
    assert math.isnan(sample_std([1.0])) and math.isnan(mean_std([])[0])
    assert mean_std([1.0, math.nan, 3.0]) == (2.0, pytest.approx(math.sqrt(2.0)))
    assert pm(1.0, math.nan, 2) == "1.00 ± -"
    assert std_note("seeds") == "± is the sample standard deviation (ddof = 1) over seeds."


def test_every_table_uses_the_sample_std():
    from mrlearn.evaluation.evaluate import summarise
    from mrlearn.evaluation.scoring import summarise_volumes
    from mrlearn.study.stats import mean_std as study_mean_std
    from mrlearn.training.demo import summary_rows

    vols = {f"v{i}": {"nmse": 0.01 * (i + 1), "psnr": 30.0 + 2 * i, "ssim": 0.8 + 0.01 * i} for i in range(3)}
    psnrs = [v["psnr"] for v in vols.values()]
    want = np.std(psnrs, ddof=1)
    assert summarise_volumes(vols)["psnr_std"] == pytest.approx(want)  # logged val_*_std and metrics.json
    assert summarise([{"acquisition": "PD", **v} for v in vols.values()])["all"]["psnr"]["std"] == pytest.approx(want)
    assert study_mean_std(psnrs)[1] == pytest.approx(want)  # the study table and its error bars
    row = summary_rows({"U-Net": {"volumes": vols, "history": [], "convergence": {}}})[0]
    assert row["PSNR"] == f"{np.mean(psnrs):.2f} ± {want:.2f}"  # the demo table


def test_demo_report_states_the_std_and_draws_the_shared_figures(tmp_path):
    import base64

    from mrlearn.training.demo import demo_report

    target, good, bad = _images(1)
    ex = {"vol_slice1/target": target[1], "vol_slice1/output": good[1], "vol_slice1/maxval": np.float64(target.max())}
    vols = {"vol.h5": {"nmse": 0.01, "psnr": 30.0, "ssim": 0.8}, "w.h5": {"nmse": 0.02, "psnr": 28.0, "ssim": 0.7}}
    hist = [{"epoch": 0, "step": 2, "train_loss": 0.3, "val_psnr": 25.0, "val_ssim": 0.6}]
    results = {"zero-filled": {"volumes": vols, "history": [], "convergence": {}, "seconds": 1.0, "method": "reference",
                               "examples": {**ex, "vol_slice1/output": bad[1]}},
               "U-Net": {"volumes": vols, "history": hist, "seconds": 2.0, "method": "supervised", "examples": ex,
                         "convergence": {"steps": 2, "best_step": 2, "stopped_by": "max_epochs", "converged": False}}}
    spec = type("Spec", (), {"description": "", "name": "demo"})()
    html = demo_report(spec, results, tmp_path, 0.1, 3.0).to_html()
    assert html.count(std_note("test volumes")) >= 2  # the setup text and the table caption
    assert "30.00 ± 0.00" not in html and f"29.00 ± {np.std([30.0, 28.0], ddof=1):.2f}" in html
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(pngs) == 2 and all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs)  # examples, curves
    assert "one colour scale" in html and "Star: the best validation" in html
