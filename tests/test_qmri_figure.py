"""The IVIM overview figure: colour limits from voxels not at a fit bound, crop to the largest mask component, no
overlapping labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrlearn.qmri.figure import build_overview, colour_limits, crop_box, largest_component
from mrlearn.qmri.signal import get_model

B = np.array([5, 10, 20, 30, 50, 80, 100, 200, 400, 600, 800], dtype=np.float64)


def test_colour_limits_ignore_voxels_at_a_bound():
    rng = np.random.default_rng(0)
    inner = rng.uniform(0.3, 0.4, 200)  # a cord-like D
    values = np.concatenate([inner, np.zeros(30), np.full(30, 5.0)])  # 23 % of the voxels at the fit bounds 0 and 5
    held = np.concatenate([np.zeros(200, bool), np.ones(60, bool)])
    lo, hi, n = colour_limits(values, held)
    assert (lo, hi) == tuple(np.percentile(inner, [2, 98])) and n == 200
    lo_all, hi_all, _ = colour_limits(values, None)
    assert lo_all == 0.0 and hi_all == 5.0  # what the old limits did: the bounds
    # every voxel at a bound: fall back to all of them; a constant map still gets high > low
    assert colour_limits(values[200:], held[200:])[:2] == (0.0, 5.0)
    lo_c, hi_c, _ = colour_limits(np.full(10, 0.34))
    assert hi_c > lo_c == 0.34


def test_largest_component_and_crop():
    mask = np.zeros((40, 30, 3), bool)
    mask[10:16, 8:14, :] = True          # the cord: 6 x 6 x 3 = 108 voxels
    mask[30, 2, 1] = mask[35, 25, 1] = mask[2, 28, 1] = True  # scattered specks of the default mask
    mask[25:29, 20:24, 1] = True         # a second blob of 16 voxels
    main = largest_component(mask)
    assert main.sum() == 108 and main[10:16, 8:14, :].all()
    assert crop_box(main[:, :, 1], 2) == (slice(8, 18), slice(6, 16))
    assert largest_component(np.zeros((3, 3, 1), bool)).sum() == 0


def _case(shape=(40, 30, 2), block=(slice(12, 22), slice(10, 18)), s0=1000.0):
    rng = np.random.default_rng(1)
    mask = np.zeros(shape, bool)
    mask[block[0], block[1], :] = True
    mask[36, 3, 0] = mask[2, 27, 1] = mask[38, 28, 0] = True
    maps = {"S0": np.where(mask, rng.uniform(0.9 * s0, 1.1 * s0, shape), 0), "f": np.where(mask, rng.uniform(0.05, 0.2, shape), 0),
            "D": np.where(mask, rng.uniform(0.3, 0.4, shape), 0), "Dstar": np.where(mask, rng.uniform(10, 60, shape), 0)}
    at_bound = {k: np.zeros(shape, bool) for k in maps}
    idx = np.argwhere(mask)[:40]
    for j, (x, y, z) in enumerate(idx):  # 40 voxels with D at a bound (0 or 5)
        maps["D"][x, y, z] = 0.0 if j % 2 else 5.0
        at_bound["D"][x, y, z] = True
    fn, _ = get_model("ivim")
    theta = torch.from_numpy(np.stack([maps[k] for k in ("S0", "f", "D", "Dstar")], -1).reshape(-1, 4))
    data = fn(theta, torch.from_numpy(B)).numpy().reshape(*shape, B.size)
    return maps, mask, data, at_bound, fn


def test_overview_panels_use_not_at_bound_limits_and_the_largest_component():
    import matplotlib.pyplot as plt

    maps, mask, data, at_bound, fn = _case()
    fig, panels = build_overview(maps, mask, data, B, fn, "mle", margin=3, at_bound=at_bound)
    try:
        by = {p["name"]: p for p in panels}
        lo, hi = by["D"]["limits"]
        keep = mask & ~at_bound["D"]
        assert (lo, hi) == tuple(np.percentile(maps["D"][keep], [2, 98])) and 0.3 <= lo < hi <= 0.4
        assert by["D"]["box"] == (slice(9, 25), slice(7, 21))  # the 10 x 8 block + 3, not the specks
        assert "40 at a fit bound" in by["D"]["hist"].get_title()
    finally:
        plt.close(fig)


def _drawn_ticks(axis):
    """Tick labels inside the view limits (matplotlib keeps, but does not draw, labels of ticks beyond them)."""
    lo, hi = sorted(axis.get_view_interval())
    span = hi - lo
    return [t for loc, t in zip(axis.get_ticklocs(), axis.get_ticklabels())
            if t.get_text() and lo - 1e-9 * span <= loc <= hi + 1e-9 * span]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("shape,block,s0", [
    ((40, 30, 2), (slice(12, 22), slice(10, 18)), 1000.0),
    # a wide crop and S0 in small float units (colour-bar ticks like 0.000345): the old fixed spacing overlapped here
    ((90, 30, 2), (slice(4, 86), slice(10, 19)), 3.5e-4),
])
def test_overview_labels_do_not_overlap(shape, block, s0):
    import matplotlib.pyplot as plt

    maps, mask, data, at_bound, fn = _case(shape, block, s0)
    fig, panels = build_overview(maps, mask, data, B, fn, "mle", at_bound=at_bound)
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        boxes = []
        for p in panels:
            bar, hist, ax_map = p["bar"], p["hist"], p["map"]
            bar_label = bar.ax.yaxis.label.get_window_extent(r)
            hist_label = hist.yaxis.label.get_window_extent(r)
            assert bar_label.width > 0 and hist_label.width > 0
            assert not _overlap(bar_label, hist_label), p["name"]
            items = [("bar label", bar.ax.yaxis.label), ("hist ylabel", hist.yaxis.label),
                     ("hist xlabel", hist.xaxis.label), ("hist title", hist.title), ("map title", ax_map.title)]
            items += [("bar tick", t) for t in _drawn_ticks(bar.ax.yaxis)]
            items += [("hist ytick", t) for t in _drawn_ticks(hist.yaxis)]
            items += [("hist xtick", t) for t in _drawn_ticks(hist.xaxis)]
            boxes += [(f"{p['name']} {k}", t.get_window_extent(r)) for k, t in items]
        for i, (na, a) in enumerate(boxes):
            for nb, b in boxes[i + 1:]:
                assert not _overlap(a, b), (na, nb)
    finally:
        plt.close(fig)
