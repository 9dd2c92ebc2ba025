"""Segmentation losses on class logits (plain torch; no Lightning).

Shapes: ``logits`` real ``[B, K, h, w]`` (K classes, unnormalised), ``labels`` int64 ``[B, h, w]`` or
``[B, 1, h, w]`` with class indices ``0 .. K-1`` and ``ignore_index`` (-1, the fill of
:data:`mrlearn.data.sample.FILL_VALUES`) for pixels that carry no label (samples from files without a segmentation).

* cross-entropy: ``mean over labelled pixels of -log softmax(logits)[label]`` (``F.cross_entropy`` with
  ``ignore_index``); 0 (with a gradient graph) when no pixel is labelled;
* soft Dice: with ``p = softmax(logits)`` and ``g`` the one-hot labels, both zeroed at ignored pixels,
  ``D_k = (2 sum p_k g_k + eps) / (sum p_k + sum g_k + eps)`` summed over the whole batch (batch Dice, as nnU-Net's
  ``batch_dice``), loss ``1 - mean_k D_k`` over the foreground classes ``k >= 1`` (``include_background``: all);
  ``eps = 1e-5`` keeps a class absent from both at ``D_k = 1``;
* ``ce_dice``: their sum (the usual nnU-Net / MONAI ``DiceCELoss`` combination, weights 1 and 1).

Under DDP (several processes, each with its share of the global batch) a training loss (gradients enabled) is the
loss of the global batch, as one process would compute it: the Dice sums and the count of labelled pixels are summed
over the processes (the Dice sums with their gradient), and the cross-entropy of process ``r`` is
``W sum_r / N`` (``W`` processes, ``N`` labelled pixels in all), so that DDP's average of the processes' gradients is
the one-process gradient and the mean over processes of the loss values is the one-process value. Every process must
then compute the loss in every step; evaluation (no gradient) stays per process.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mrlearn.errors import input_error

SEG_LOSSES = ("ce_dice", "ce", "dice")
IGNORE_INDEX = -1


def _labels(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if labels.ndim == logits.ndim:
        labels = labels[:, 0]
    if labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"labels {tuple(labels.shape)} do not fit logits {tuple(logits.shape)}")
    return labels.long()


def _world() -> int:
    """The number of processes a training loss is shared by (module docstring): 1 outside DDP or without gradients."""
    dist = torch.distributed
    if torch.is_grad_enabled() and dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _global_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the processes, with its gradient (the backward sums the processes' gradients too)."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels (module docstring; under DDP: of the global batch)."""
    labels = _labels(labels, logits)
    world = _world()
    if world > 1:
        count = (labels != ignore_index).sum().to(torch.float64)
        torch.distributed.all_reduce(count)
        if not float(count) > 0:
            return logits.sum() * 0.0
        total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
        return total * (world / float(count))
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                   include_background: bool = False, eps: float = 1e-5) -> torch.Tensor:
    """``1 - mean_k D_k`` of the batch soft Dice (module docstring; under DDP: of the global batch)."""
    labels = _labels(labels, logits)
    k = logits.shape[1]
    keep = (labels != ignore_index).unsqueeze(1).to(logits.dtype)
    prob = torch.softmax(logits.float(), dim=1) * keep
    onehot = F.one_hot(labels.clamp(0, k - 1), k).movedim(-1, 1).to(prob.dtype) * keep
    dims = (0,) + tuple(range(2, logits.ndim))
    sums = torch.stack([(prob * onehot).sum(dims), prob.sum(dims), onehot.sum(dims)])  # [3, K]
    if _world() > 1:
        sums = _global_sum(sums)
    dice = (2 * sums[0] + eps) / (sums[1] + sums[2] + eps)
    first = 0 if include_background or k == 1 else 1
    return 1.0 - dice[first:].mean()


class SegLoss(nn.Module):
    """``kind``: ``ce_dice`` (sum), ``ce`` or ``dice``; called ``loss(logits, labels)`` (module docstring)."""

    def __init__(self, kind: str = "ce_dice", ignore_index: int = IGNORE_INDEX, where: str = "method.seg_loss"):
        super().__init__()
        if kind not in SEG_LOSSES:
            raise input_error(where, f"unknown segmentation loss {kind!r}", f"choose one of: {', '.join(SEG_LOSSES)}")
        self.kind, self.ignore_index = kind, int(ignore_index)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = logits.sum() * 0.0
        if self.kind in ("ce", "ce_dice"):
            out = out + cross_entropy(logits, labels, self.ignore_index)
        if self.kind in ("dice", "ce_dice"):
            out = out + soft_dice_loss(logits, labels, self.ignore_index)
        return out
