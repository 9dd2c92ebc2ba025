"""The overview figure of an IVIM fit, for a clinician: maps cropped to the tissue, histograms, fitted curves.

Layout (matplotlib Agg, constrained layout, about 1500 x 1300 px): per parameter a map beside its histogram, below
them the data and fitted curves of a few voxels (the 10th, 50th and 90th percentile of D among the voxels whose D
is not at a fit bound). Text is at least 10 pt;
constrained layout keeps the colour-bar labels clear of the histograms' axis labels. When b = 0 was not acquired,
S0 is labelled as extrapolated.

- Crop: the largest connected component of the mask (3-D, face-connected, :func:`largest_component`), shown in the
  slice holding most of its voxels, cropped to its bounding box in that slice plus a margin; every fitted voxel in
  that box is drawn, background and excluded voxels in a flat grey distinct from any map colour.
- Colour limits (:func:`colour_limits`): the 2nd and 98th percentiles of the fitted voxels whose value of that
  parameter is not at a fit bound (all fitted voxels for a network, or when every voxel is at a bound).
- Histogram: the same voxels (those at a bound are counted in its title), dotted lines at the colour limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mrlearn.io import atomic_write_bytes

LABELS = {"S0": ("S0", "signal units"), "f": ("f, perfusion fraction", "fraction"),
          "D": ("D, diffusion", "um^2/ms (1e-3 mm^2/s)"), "Dstar": ("D*, pseudo-diffusion", "um^2/ms (1e-3 mm^2/s)")}
BACKGROUND = "#b0b0b0"
PERCENTILES = (2.0, 98.0)
SCI_LIMITS = (-3, 4)  # tick labels of values below 1e-3 or from 1e4 on get a common power of ten


def crop_box(mask2d: np.ndarray, margin: int = 4) -> tuple[slice, slice]:
    """Bounding box of ``mask2d`` grown by ``margin`` pixels (clipped to the image)."""
    ii, jj = np.nonzero(mask2d)
    if ii.size == 0:
        return slice(None), slice(None)
    return (slice(max(0, ii.min() - margin), min(mask2d.shape[0], ii.max() + margin + 1)),
            slice(max(0, jj.min() - margin), min(mask2d.shape[1], jj.max() + margin + 1)))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean mask (``scipy.ndimage.label``; the first on a tie)."""
    from scipy.ndimage import label

    labels, n = label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def colour_limits(values: np.ndarray, at_bound: np.ndarray | None = None) -> tuple[float, float, int]:
    """(low, high, voxels used): the :data:`PERCENTILES` of ``values`` where ``at_bound`` is False (all values when
    ``at_bound`` is None or True everywhere); ``high > low`` always."""
    use = values if at_bound is None or bool(np.all(at_bound)) else values[~at_bound]
    use = use[np.isfinite(use)]
    if use.size == 0:
        return 0.0, 1.0, 0
    lo, hi = (float(v) for v in np.percentile(use, PERCENTILES))
    if not hi > lo:
        hi = lo + max(1e-6, 1e-6 * abs(lo))
    return lo, hi, int(use.size)


def build_overview(maps: dict[str, np.ndarray], mask: np.ndarray, data: np.ndarray, b: np.ndarray,
                   model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], method: str, margin: int = 4,
                   at_bound: dict[str, np.ndarray] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """The figure and per parameter its parts (``map``, ``bar``, ``hist`` axes or colour bar, ``limits``, ``box``,
    ``slice``); ``maps`` name -> ``[X, Y, Z]``, ``mask`` the fitted voxels, ``data [X, Y, Z, N]``, ``at_bound``
    name -> ``[X, Y, Z]`` bool (voxels held at a fit bound)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plt.rcParams.update({"font.size": 11})
    main = largest_component(mask)
    z = int(np.argmax(main.sum((0, 1))))
    box = crop_box(main[:, :, z], margin)
    names = list(maps)
    fig = plt.figure(figsize=(15, 13), dpi=100, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.08, h_pad=0.08, wspace=0.06, hspace=0.06)
    grid = fig.add_gridspec(3, 4, height_ratios=[1, 1, 0.9], width_ratios=[1.2, 0.8, 1.2, 0.8])
    panels = []
    for i, k in enumerate(names):
        r, c = divmod(i, 2)
        ax_map = fig.add_subplot(grid[r, 2 * c])
        ax_hist = fig.add_subplot(grid[r, 2 * c + 1])
        vals = maps[k][mask]
        held = None if at_bound is None or k not in at_bound else at_bound[k][mask]
        lo, hi, n_used = colour_limits(vals, held)
        shown = vals if held is None or n_used == 0 or bool(np.all(held)) else vals[~held]
        sl = np.where(mask[:, :, z], maps[k][:, :, z], np.nan)[box]
        cmap = plt.get_cmap("gray" if k == "S0" else "viridis").with_extremes(bad=BACKGROUND)
        im = ax_map.imshow(np.ma.masked_invalid(sl).T, origin="lower", cmap=cmap, vmin=lo, vmax=hi,
                           interpolation="nearest")
        title, unit = LABELS.get(k, (k, ""))
        if k == "S0" and float(b.min()) > 0:
            title = "S0, extrapolated (no b=0)"
        ax_map.set_title(title, fontsize=11)
        ax_map.set_xticks([])
        ax_map.set_yticks([])
        bar = fig.colorbar(im, ax=ax_map, fraction=0.046, pad=0.03)
        bar.set_label(unit, fontsize=10)
        bar.ax.tick_params(labelsize=10)
        bar.ax.ticklabel_format(axis="y", style="sci", scilimits=SCI_LIMITS)
        ax_hist.hist(shown, bins=40, color="C0")
        ax_hist.axvline(lo, color="k", lw=0.8, ls=":")
        ax_hist.axvline(hi, color="k", lw=0.8, ls=":")
        ax_hist.set_xlabel(unit, fontsize=10)
        ax_hist.set_ylabel("voxels", fontsize=10)
        n_held = 0 if held is None else int(held.sum())
        head = f"median {np.median(shown):.3g}" if shown.size else "no voxels"
        ax_hist.set_title(head + (f"\n{n_held} at a fit bound, not shown" if n_held else ""), fontsize=10)
        ax_hist.tick_params(labelsize=10)
        ax_hist.xaxis.set_major_locator(MaxNLocator(4))
        ax_hist.ticklabel_format(axis="x", style="sci", scilimits=SCI_LIMITS)
        panels.append({"name": k, "map": ax_map, "bar": bar, "hist": ax_hist, "limits": (lo, hi), "box": box,
                       "slice": z})
    ax_c = fig.add_subplot(grid[2, :])
    _curves(ax_c, maps, mask, data, b, model_fn, at_bound)
    fig.suptitle(f"IVIM fit ({method}): slice {z}, {int(mask.sum())} voxels fitted; grey = outside mask or excluded",
                 fontsize=13)
    return fig, panels


def overview_figure(path: Path, maps: dict[str, np.ndarray], mask: np.ndarray, data: np.ndarray, b: np.ndarray,
                    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], method: str,
                    margin: int = 4, at_bound: dict[str, np.ndarray] | None = None) -> Path:
    """Write the PNG of :func:`build_overview` atomically."""
    import io

    import matplotlib.pyplot as plt

    fig, _ = build_overview(maps, mask, data, b, model_fn, method, margin, at_bound)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _curves(ax, maps: dict[str, np.ndarray], mask: np.ndarray, data: np.ndarray, b: np.ndarray,
            model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            at_bound: dict[str, np.ndarray] | None = None) -> None:
    """Data points and fitted curves of the voxels at the 10th, 50th and 90th percentile of D (among the voxels
    whose D is not at a fit bound, when there are any)."""
    names = list(maps)
    key = "D" if "D" in maps else names[-1]
    pick = mask
    if at_bound is not None and key in at_bound and (mask & ~at_bound[key]).any():
        pick = mask & ~at_bound[key]
    idx = np.argwhere(pick)
    vals = maps[key][pick]
    bb = np.linspace(0, float(b.max()), 200)
    for j, q in enumerate((10, 50, 90)):
        if vals.size == 0:
            break
        n = int(np.argmin(np.abs(vals - np.percentile(vals, q))))
        x, y, zz = idx[n]
        theta = torch.tensor([[maps[k][x, y, zz] for k in names]], dtype=torch.float64)
        curve = model_fn(theta, torch.from_numpy(bb))[0].numpy()
        col = f"C{j}"
        ax.plot(b, data[x, y, zz], "o", color=col, ms=6)
        ax.plot(bb, curve, "-", color=col, lw=1.5,
                label=f"voxel ({x},{y},{zz}), {q}th pct of {key}: " + ", ".join(f"{k} {maps[k][x, y, zz]:.3g}" for k in names))
    ax.set_xlabel("b-value (s/mm^2)", fontsize=11)
    ax.set_ylabel("signal (input units)", fontsize=11)
    ax.set_title("measured signal (dots) and fitted model (lines)", fontsize=11)
    ax.legend(fontsize=10, loc="upper right")
    ax.tick_params(labelsize=10)
