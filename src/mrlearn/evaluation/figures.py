"""Report figures shared by the demo and study reports: example slices with error maps, training curves, and label
overlays (:func:`label_overlay_figure`: reference and predicted class labels over the image, with each slice's Dice).

:func:`example_figure`: per shown slice one row of images (target, then each method) on one grey scale
``[0, max]`` of that row, with the slice's PSNR and SSIM under each method (fastMRI metrics of that slice with
the data range given - the target *volume*'s maximum, as the scored numbers use), and one row of absolute error
maps ``|method - target|``. Every error map of the figure shares ONE colour scale ``[0, max |error|]`` with one
colour bar, so a smaller error looks darker.

:func:`curves_figure`: training loss and validation metrics against optimiser steps. Losses of different kinds
(``loss_kind``, e.g. image domain vs k-space) get separate axes, never one; each run's best validation point
(``best_step``) is marked with a star and its stop point (``stop_step``, what stopped it) with a cross.
Matplotlib (Agg); the caller closes the figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from mrlearn.evaluation.metrics import psnr, ssim

ERROR_CMAP = "inferno"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def slice_scores(target: np.ndarray, image: np.ndarray, data_range: float | None = None) -> dict[str, float]:
    """PSNR (dB) and SSIM of one slice ``[h, w]`` (``data_range``: peak and SSIM range, default the slice max)."""
    t = np.asarray(target, dtype=np.float64)
    x = np.abs(np.asarray(image)).astype(np.float64) if np.iscomplexobj(image) else np.asarray(image, dtype=np.float64)
    peak = float(t.max()) if data_range is None else float(data_range)
    return {"psnr": float(psnr(t, x, peak)), "ssim": float(ssim(t, x, peak))}


def score_text(scores: dict[str, float]) -> str:
    """``PSNR 31.20 dB / SSIM 0.8123``: the text under an example image."""
    return f"PSNR {scores['psnr']:.2f} dB / SSIM {scores['ssim']:.4f}"


@dataclass
class ExampleSlice:
    """One shown slice: ``target [h, w]``, the methods' ``images`` ``[(label, [h, w])]`` and the metrics'
    ``data_range`` (None: the slice's maximum). ``extra``: panels drawn without score or error map (e.g. the
    zero-filled network input of a study)."""

    title: str
    target: np.ndarray
    images: list[tuple[str, np.ndarray]]
    data_range: float | None = None
    extra: list[tuple[str, np.ndarray]] = field(default_factory=list)


def _magnitude(a: Any) -> np.ndarray:
    arr = np.asarray(a)
    return np.abs(arr).astype(np.float64) if np.iscomplexobj(arr) else arr.astype(np.float64)


def example_figure(slices: Sequence[ExampleSlice]):
    """Image rows with scores and error rows on one shared error scale (see the module docstring)."""
    plt = _plt()
    slices = list(slices)
    ncols = max(1 + len(s.extra) + len(s.images) for s in slices)
    fig, axes = plt.subplots(2 * len(slices), ncols + 1, figsize=(2.4 * ncols + 0.6, 2.7 * 2 * len(slices)),
                             squeeze=False, gridspec_kw={"width_ratios": [1] * ncols + [0.06]})
    errors = [[np.abs(_magnitude(img) - _magnitude(s.target)) for _, img in s.images] for s in slices]
    finite = [e[np.isfinite(e)] for row in errors for e in row]
    err_max = max((float(e.max()) for e in finite if e.size), default=0.0) or 1.0
    err_im = None
    for r, (s, errs) in enumerate(zip(slices, errors)):
        top, bottom = axes[2 * r], axes[2 * r + 1]
        panels = [("target", s.target, None), *[(lab, img, None) for lab, img in s.extra],
                  *[(lab, img, slice_scores(s.target, img, s.data_range)) for lab, img in s.images]]
        grey_max = max(float(np.nanmax(_magnitude(img))) for _, img, _ in panels) or 1.0
        grey = None
        for c, (label, img, scores) in enumerate(panels):
            ax = top[c]
            grey = ax.imshow(_magnitude(img), cmap="gray", vmin=0.0, vmax=grey_max)
            ax.set_title(label if c else f"{s.title}\ntarget", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
            if scores is not None:
                ax.set_xlabel(score_text(scores), fontsize=7)
        first_err = 1 + len(s.extra)
        for c, ((label, _), err) in enumerate(zip(s.images, errs)):
            ax = bottom[first_err + c]
            err_im = ax.imshow(err, cmap=ERROR_CMAP, vmin=0.0, vmax=err_max)
            ax.set_title(f"|error| {label}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
        for c in range(ncols):
            if c >= len(panels):
                top[c].axis("off")
            if not first_err <= c < first_err + len(errs):
                bottom[c].axis("off")
        fig.colorbar(grey, cax=top[ncols]).ax.tick_params(labelsize=6)
        bottom[ncols].axis("off")
    if err_im is not None:  # one colour bar for every error map: the last error row's bar axis
        cax = axes[-1][ncols]
        cax.axis("on")
        bar = fig.colorbar(err_im, cax=cax)
        bar.set_label("|error| (all maps, one scale)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


@dataclass
class Curve:
    """One run's training record: ``history`` entries (``step``, ``epoch``, ``train_loss``, ``val_*``), the kind
    of its loss (``loss_kind``: its axis), ``best_step`` (best validation) and ``stop_step`` / ``stopped_by``."""

    label: str
    history: list[dict[str, float]]
    loss_kind: str = "training loss"
    best_step: float | None = None
    stop_step: float | None = None
    stopped_by: str | None = None


def _points(hist: list[dict[str, float]], key: str) -> list[tuple[float, float]]:
    pts = []
    for h in hist:
        if key in h and h[key] is not None and math.isfinite(float(h[key])):
            pts.append((float(h.get("step", h.get("epoch", 0) + 1)), float(h[key])))
    return pts


def _nearest(pts: list[tuple[float, float]], step: float) -> tuple[float, float] | None:
    return min(pts, key=lambda p: abs(p[0] - step)) if pts else None


def curves_figure(curves: Sequence[Curve], metrics: Sequence[tuple[str, str]] = (("val_psnr", "validation PSNR (dB)"),
                                                                             ("val_ssim", "validation SSIM"))):
    """One loss axis per loss kind, then one axis per validation metric; best (star) and stop (cross) marked."""
    plt = _plt()
    kinds = list(dict.fromkeys(c.loss_kind for c in curves))
    n = len(kinds) + len(metrics)
    fig, axes = plt.subplots(1, n, figsize=(4.0 * n, 3.4), squeeze=False)
    axes = axes[0]
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        panels = [(axes[kinds.index(c.loss_kind)], "train_loss")] + [(axes[len(kinds) + j], key)
                                                                     for j, (key, _) in enumerate(metrics)]
        for ax, key in panels:
            pts = _points(c.history, key)
            if not pts:
                continue
            ax.plot(*zip(*pts), marker="o", ms=3, color=color, label=c.label)
            best = _nearest(pts, c.best_step) if c.best_step is not None else None
            stop = _nearest(pts, c.stop_step) if c.stop_step is not None else None
            if best is not None:
                ax.plot(*best, marker="*", ms=13, color=color, mec="k", ls="none",
                        label=f"{c.label}: best (step {c.best_step:g})")
            if stop is not None:
                ax.plot(*stop, marker="X", ms=10, color=color, mec="k", ls="none",
                        label=f"{c.label}: stop (step {c.stop_step:g}{', ' + c.stopped_by if c.stopped_by else ''})")
    for ax, title in zip(axes, [f"training loss: {k}" for k in kinds] + [t for _, t in metrics]):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


__all__ = ["Curve", "ExampleSlice", "curves_figure", "example_figure", "score_text", "slice_scores"]


@dataclass
class LabelSlice:
    """One slice for :func:`label_overlay_figure`: the ``image`` ``[h, w]`` drawn underneath, the reference
    ``labels`` ``[h, w]`` (integers, 0 background, -1 unlabelled) and each arm's labels ``[(arm, [h, w])]``."""

    title: str
    image: np.ndarray
    labels: np.ndarray
    arms: list[tuple[str, np.ndarray]]


def _overlay(ax: Any, image: np.ndarray, labels: np.ndarray) -> None:
    """``image`` in grey with every foreground class in its own colour (tab10, alpha 0.45) on top."""
    plt = _plt()
    ax.imshow(_magnitude(image), cmap="gray")
    lab = np.asarray(labels).astype(np.int64)
    shown = np.ma.masked_where(lab <= 0, lab)  # background and unlabelled pixels stay grey
    ax.imshow(shown, cmap=plt.get_cmap("tab10", 10), vmin=0, vmax=9, alpha=0.45, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])


def label_overlay_figure(slices: Sequence[LabelSlice]):
    """Per slice one row: the reference labels, then each arm's labels, over the image; under each arm its mean
    foreground Dice on that slice (classes present in either map; :mod:`mrlearn.evaluation.segmentation`)."""
    from mrlearn.evaluation.segmentation import dice_per_class, mean_foreground

    plt = _plt()
    slices = list(slices)
    ncols = max(1 + len(s.arms) for s in slices)
    fig, axes = plt.subplots(len(slices), ncols, figsize=(2.4 * ncols, 2.7 * len(slices)), squeeze=False)
    for r, s in enumerate(slices):
        ref = np.asarray(s.labels).astype(np.int64)
        classes = int(max([ref.max(), *[np.asarray(a).max() for _, a in s.arms]])) + 1
        _overlay(axes[r][0], s.image, ref)
        axes[r][0].set_title(f"{s.title}\nreference labels", fontsize=8)
        for c, (arm, lab) in enumerate(s.arms, 1):
            pred = np.asarray(lab).astype(np.int64)
            _overlay(axes[r][c], s.image, pred)
            axes[r][c].set_title(arm, fontsize=8)
            dice = mean_foreground(dice_per_class(pred, ref, classes))
            axes[r][c].set_xlabel(f"Dice {dice:.3f}" if dice == dice else "Dice -", fontsize=7)
        for c in range(1 + len(s.arms), ncols):
            axes[r][c].axis("off")
    fig.tight_layout()
    return fig
