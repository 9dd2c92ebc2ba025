"""fastMRI image-quality metrics (fastMRI's evaluation code) and a differentiable SSIM loss.

Volumes are real arrays ``[S, H, W]`` (a single slice ``[H, W]`` is treated as ``S = 1``); computations run in
float64. Conventions, exactly as fastMRI's evaluation:
- ``nmse = ||gt - pred||^2 / ||gt||^2`` over the whole volume;
- ``psnr = 10 log10(maxval^2 / mse)`` with ``mse`` over the whole volume and ``maxval = gt.max()`` by default;
- ``ssim``: per slice, 7 x 7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance (``N / (N - 1)``),
  ``data_range = maxval`` (default ``gt.max()`` over the whole volume), the SSIM map averaged over the pixels
  whose window lies fully inside the image (skimage crops ``(win - 1) // 2`` at each border); then averaged over
  slices. This equals ``skimage.metrics.structural_similarity(gt[s], pred[s], data_range=maxval)``.
Numbers from other SSIMs (11 x 11 Gaussian, data_range 1) are not comparable. Whole volumes are scored with
``evaluation.scoring`` (the one per-volume scorer), which uses these functions.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import uniform_filter

from mrlearn.errors import input_error

K1, K2, WIN_SIZE = 0.01, 0.03, 7


def _pair(gt: np.ndarray, pred: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.shape != pred.shape:
        raise input_error(name, f"target shape {gt.shape} differs from prediction shape {pred.shape}",
                          "compare volumes of the same size")
    if gt.ndim == 2:
        gt, pred = gt[None], pred[None]
    if gt.ndim != 3 or gt.size == 0:
        raise input_error(name, f"expected a volume [S, H, W], got shape {gt.shape}", "pass [slices, height, width]")
    return gt, pred


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Normalised MSE ``||gt - pred||^2 / ||gt||^2`` of a volume (``inf`` when ``gt`` is all zero)."""
    gt, pred = _pair(gt, pred, "nmse")
    den = float(np.sum(gt**2))
    num = float(np.sum((gt - pred) ** 2))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def psnr(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> float:
    """PSNR in dB: ``10 log10(maxval^2 / mse)``, ``maxval = gt.max()`` over the volume by default."""
    gt, pred = _pair(gt, pred, "psnr")
    maxval = float(gt.max()) if maxval is None else float(maxval)
    mse = float(np.mean((gt - pred) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * np.log10(maxval**2 / mse)


def ssim_map(gt_slice: np.ndarray, pred_slice: np.ndarray, data_range: float, win_size: int = WIN_SIZE) -> np.ndarray:
    """The SSIM map of one slice ``[H, W]`` cropped to the valid region ``[H - win + 1, W - win + 1]``."""
    x = np.asarray(gt_slice, dtype=np.float64)
    y = np.asarray(pred_slice, dtype=np.float64)
    if min(x.shape) < win_size:
        raise input_error("ssim", f"slice of size {x.shape} is smaller than the {win_size} x {win_size} window",
                          "use images of at least 7 x 7 pixels")
    n = win_size * win_size
    cov_norm = n / (n - 1.0)
    filt = lambda a: uniform_filter(a, size=win_size)  # noqa: E731
    ux, uy = filt(x), filt(y)
    uxx, uyy, uxy = filt(x * x), filt(y * y), filt(x * y)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    return s[pad:s.shape[0] - pad, pad:s.shape[1] - pad]


def ssim(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None, win_size: int = WIN_SIZE) -> float:
    """fastMRI SSIM of a volume: mean over slices of the mean valid-region SSIM, ``data_range = maxval``."""
    gt, pred = _pair(gt, pred, "ssim")
    maxval = float(gt.max()) if maxval is None else float(maxval)
    return float(np.mean([ssim_map(g, p, maxval, win_size).mean() for g, p in zip(gt, pred)]))


def slice_ssim(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> np.ndarray:
    """Per-slice SSIM ``[S]`` with one ``data_range`` for the volume (default ``gt.max()``)."""
    gt, pred = _pair(gt, pred, "ssim")
    maxval = float(gt.max()) if maxval is None else float(maxval)
    return np.array([ssim_map(g, p, maxval).mean() for g, p in zip(gt, pred)])


class SSIMLoss(torch.nn.Module):
    """``1 - SSIM`` with the fastMRI SSIM (uniform ``win_size`` window, K1, K2, sample covariance), differentiable.

    ``forward(pred, target, data_range)``: ``pred``/``target`` real ``[B, H, W]`` or ``[B, 1, H, W]``;
    ``data_range`` a float or a tensor ``[B]`` (one per sample, e.g. the target volume max). The SSIM map is taken
    over the valid region (windows fully inside the image), averaged per sample; ``reduction="mean"`` returns
    ``1 - mean_b SSIM_b``, ``"none"`` returns ``1 - SSIM_b`` per sample ``[B]``. The value equals
    ``1 - ssim(target[b], pred[b], data_range[b])`` of :func:`ssim` on one slice.
    """

    def __init__(self, win_size: int = WIN_SIZE, k1: float = K1, k2: float = K2, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "none"):
            raise input_error("SSIMLoss reduction", f"unknown value {reduction!r}", "use 'mean' or 'none'")
        self.win_size, self.k1, self.k2, self.reduction = int(win_size), float(k1), float(k2), reduction
        n = self.win_size**2
        self.cov_norm = n / (n - 1.0)

    def _box(self, x: torch.Tensor) -> torch.Tensor:
        """Valid-region mean over ``win x win`` windows of each channel of ``[B, K, H, W]``.

        Separable sums of shifted views (``n`` adds per axis): several times faster than ``avg_pool2d`` on CPU.
        """
        n = self.win_size
        w = x.shape[-1] - n + 1
        rows = x[..., 0:w]
        for i in range(1, n):
            rows = rows + x[..., i:i + w]
        h = x.shape[-2] - n + 1
        box = rows[..., 0:h, :]
        for i in range(1, n):
            box = box + rows[..., i:i + h, :]
        return box / (n * n)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, data_range: torch.Tensor | float) -> torch.Tensor:
        if pred.shape != target.shape:
            raise input_error("SSIMLoss", f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ",
                              "pass tensors of the same shape")
        if pred.ndim == 3:
            pred, target = pred.unsqueeze(1), target.unsqueeze(1)
        if pred.ndim != 4 or pred.shape[1] != 1:
            raise input_error("SSIMLoss", f"expected [B, H, W] or [B, 1, H, W], got {tuple(pred.shape)}",
                              "pass single-channel real images")
        if min(pred.shape[-2:]) < self.win_size:
            raise input_error("SSIMLoss", f"image {tuple(pred.shape[-2:])} smaller than the window {self.win_size}",
                              "use larger images or a smaller win_size")
        b = pred.shape[0]
        dr = torch.as_tensor(data_range, dtype=pred.dtype, device=pred.device).reshape(-1)
        dr = dr.expand(b) if dr.numel() == 1 else dr
        dr = dr.reshape(b, 1, 1, 1)
        c1 = (self.k1 * dr) ** 2
        c2 = (self.k2 * dr) ** 2
        x, y = target, pred
        ux, uy, uxx, uyy, uxy = self._box(torch.cat((x, y, x * x, y * y, x * y), dim=1)).split(1, dim=1)
        vx = self.cov_norm * (uxx - ux * ux)
        vy = self.cov_norm * (uyy - uy * uy)
        vxy = self.cov_norm * (uxy - ux * uy)
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        per_sample = s.mean(dim=(1, 2, 3))
        loss = 1.0 - per_sample
        return loss.mean() if self.reduction == "mean" else loss
