"""Patch matrices: a k x k conv over a C-channel image is a linear map on ``k*k*C`` patch vectors.

``patch_matrix(x, k)`` turns ``[B, C, H, W]`` into ``Y`` ``[B*H*W, C*k*k]`` (zero padding ``k // 2``); row
``(b, h, w)`` is the patch centred at pixel ``(h, w)`` of image ``b``, flattened in the order of a Conv2d
weight ``[out, C, k, k].reshape(out, -1)``, so ``Y @ weight.reshape(out, -1).T`` equals
``conv2d(x, weight, padding=k // 2)`` with pixels as rows. ``pixel_matrix`` flattens an image the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_matrix(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B*H*W, C*k*k]`` patch rows (zero padded, "same" size)."""
    b, c, h, w = x.shape
    cols = F.unfold(x, kernel_size, padding=kernel_size // 2)  # [B, C*k*k, H*W]
    return cols.transpose(1, 2).reshape(b * h * w, c * kernel_size * kernel_size)


def pixel_matrix(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B*H*W, C]`` (pixels as rows, same row order as :func:`patch_matrix`)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b * h * w, c)


def sample_rows(n: int, max_rows: int | None, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Random subset of ``max_rows`` row indices out of ``n`` (None: keep all rows)."""
    if max_rows is None or max_rows >= n:
        return None
    return torch.randperm(n, generator=generator)[:max_rows]
