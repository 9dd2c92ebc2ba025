"""Pieces the joint reconstruction-segmentation networks share (plain torch; no Lightning).

Every joint network is a k-space network (``input_kind = "kspace"``, :mod:`mrlearn.models.protocol`) called
``model(kspace, mask, sens_maps) -> ReconSegOutput``:

``image``       complex ``[B, H, W]`` at the k-space matrix size, in the units of the input k-space (as
                :class:`mrlearn.models.unrolled.UnrolledNet`); the method takes ``|image|`` cropped to the target
``seg_logits``  real ``[B, K, H, W]`` unnormalised class scores (K = ``num_classes``) on the same grid; the method
                crops them like the image and ``argmax`` over K gives the labels

The segmentation branches see magnitudes normalised per image (:func:`instance_norm`), so they do not depend on the
k-space scale. :class:`Encoder` / :class:`Decoder` are the two halves of the fastMRI U-Net (two 3x3 conv + instance
norm + LeakyReLU(0.2) per level, average pooling, transpose-conv up, skip concatenation), padded like
:class:`mrlearn.models.unet.Unet`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from mrlearn.models.unet import ConvBlock, UpBlock
from mrlearn.models.unrolled import check_inputs, coil_maps, normalised_start


class ReconSegOutput(NamedTuple):
    """What a joint network returns (module docstring): complex ``image`` ``[B, H, W]``, ``seg_logits`` ``[B, K, H, W]``."""

    image: torch.Tensor
    seg_logits: torch.Tensor


def instance_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(x - mean) / std`` per sample and channel over H, W (``[B, C, H, W]``), clamped to +-6 like the data transform."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True)
    return ((x - mean) / (std + eps)).clamp(-6, 6)


def zero_filled_start(kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None,
                      multicoil: bool, maps: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(x0, y, maps, scale)`` of the unrolled networks: ``x0 = A^H y / scale`` complex ``[B, H, W]``, ``y`` the
    k-space divided by ``scale`` ``[B, 1, 1]`` (max ``|A^H y|``), the coil maps used (None single-coil)."""
    check_inputs(kspace, mask, sens_maps, multicoil, None if maps != "given" else
                 "provide maps in the data, or set model.maps: acs|espirit")
    used = coil_maps(kspace, mask, sens_maps, multicoil, maps)
    x0, y, scale = normalised_start(kspace, mask, used)
    return x0, y, used, scale


def pad_to(x: torch.Tensor, pools: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad ``[B, C, H, W]`` (centred) to a multiple of ``2 ** pools``, at least twice it; returns the padding."""
    h, w = x.shape[-2:]
    m = 2 ** pools
    ph, pw = max((-h) % m, 2 * m - h), max((-w) % m, 2 * m - w)
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return (F.pad(x, pad) if (ph or pw) else x), pad


def unpad(x: torch.Tensor, pad: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to`."""
    return x[..., pad[2]: pad[2] + size[0], pad[0]: pad[0] + size[1]]


class Encoder(nn.Module):
    """U-Net contracting path: ``pools`` levels (``chans * 2**i`` channels) then the bottleneck (``chans * 2**pools``)."""

    def __init__(self, in_chans: int, chans: int, pools: int):
        super().__init__()
        self.pools = pools
        self.levels = nn.ModuleList([ConvBlock(in_chans if i == 0 else chans * 2 ** (i - 1), chans * 2 ** i, 0.0)
                                     for i in range(pools)])
        self.bottleneck = ConvBlock(chans * 2 ** (pools - 1), chans * 2 ** pools, 0.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for block in self.levels:
            x = block(x)
            skips.append(x)
            x = F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.bottleneck(x), skips


class Decoder(nn.Module):
    """U-Net expanding path from the bottleneck back to ``chans`` channels, then a 1x1 convolution to ``out_chans``."""

    def __init__(self, out_chans: int, chans: int, pools: int):
        super().__init__()
        self.ups = nn.ModuleList()
        self.convs = nn.ModuleList()
        ch = chans * 2 ** pools
        for _ in range(pools):
            self.ups.append(UpBlock(ch, ch // 2))
            self.convs.append(ConvBlock(ch, ch // 2, 0.0))
            ch //= 2
        self.head = nn.Conv2d(chans, out_chans, kernel_size=1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        skips = list(skips)
        for up, conv in zip(self.ups, self.convs):
            x = conv(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def check_options(where: str, **values: int) -> None:
    """One-line errors for sizes below 1 (``num_classes`` needs 2: background and one class)."""
    from mrlearn.errors import input_error

    for key, value in values.items():
        low = 2 if key == "num_classes" else 1
        if int(value) < low:
            raise input_error(f"{where}.{key}", f"must be at least {low}, got {value}", "fix the value")
