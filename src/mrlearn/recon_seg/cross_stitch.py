"""Soft sharing between a reconstruction U-Net and a segmentation U-Net: cross-stitch units and sluice networks.

``model(kspace, mask, sens_maps) -> ReconSegOutput`` (:mod:`mrlearn.recon_seg.parts`). Two U-Net columns of the
same shape (``chans``, ``num_pools``) both take the zero-filled SENSE image ``x0 = A^H y / scale`` (2 channels);
the reconstruction column ends in a 2-channel residual (``image = (x0 + r) scale``), the segmentation column in
``K`` class logits. After every encoder level, the bottleneck and every decoder level (``2 num_pools + 1`` points)
a learned unit mixes the two columns' activations:

* cross-stitch (Misra et al. 2016; ``cross_stitch``): ``[x_r', x_s'] = A [x_r, x_s]`` with one 2 x 2 matrix ``A``
  per point, initialised ``[[0.9, 0.1], [0.1, 0.9]]`` (their ``alpha_S = 0.9``, ``alpha_D = 0.1``);
* sluice (Ruder et al. 2019; ``sluice``): each column's channels split into ``subspaces`` equal groups and ``A``
  mixes all ``2 G`` groups (``2G x 2G``, 0.9 on the diagonal, 0.1 spread over the rest of each row); and
  learned layer-combination weights ``beta`` (per task, over the full-resolution layers: the first encoder level's
  and the last decoder level's output, after mixing) form the input of each task's 1x1 output convolution,
  ``h_t = sum_l beta_{t,l} H_{t,l}``, initialised ``(0, 1)`` (the plain network's last layer).

``shared_parameters()``: everything both losses reach, i.e. all but the two output convolutions (and ``beta``).
"""

from __future__ import annotations

from typing import Iterator, Literal

import torch
from torch import nn

from mrlearn.errors import input_error
from mrlearn.physics.complex import channels_to_complex, complex_to_channels
from mrlearn.recon_seg.parts import Decoder, Encoder, ReconSegOutput, check_options, pad_to, unpad, zero_filled_start
from mrlearn.registry import register


class StitchUnit(nn.Module):
    """Learned linear mixing of ``2 G`` channel groups of two activations ``[B, C, H, W]`` (module docstring)."""

    def __init__(self, subspaces: int = 1, self_weight: float = 0.9):
        super().__init__()
        n = 2 * subspaces
        init = torch.full((n, n), (1.0 - self_weight) / (n - 1)) if n > 1 else torch.ones(1, 1)
        init.fill_diagonal_(self_weight)
        self.subspaces = subspaces
        self.alpha = nn.Parameter(init)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.subspaces
        units = torch.stack(list(a.chunk(g, dim=1)) + list(b.chunk(g, dim=1)))  # [2G, B, C/G, H, W]
        mixed = torch.einsum("ij,jbchw->ibchw", self.alpha.to(units.dtype), units)
        return torch.cat(list(mixed[:g]), dim=1), torch.cat(list(mixed[g:]), dim=1)


class _SoftSharing(nn.Module):
    input_kind = "kspace"

    def __init__(self, num_classes: int, chans: int, num_pools: int, multicoil: bool, maps: str, subspaces: int,
                 layer_weights: bool):
        super().__init__()
        check_options("model", num_classes=num_classes, chans=chans, num_pools=num_pools, subspaces=subspaces)
        if chans % subspaces:
            raise input_error("model.subspaces", f"{subspaces} does not divide chans {chans}",
                              "choose chans as a multiple of subspaces")
        self.num_classes, self.num_pools, self.multicoil, self.maps = int(num_classes), int(num_pools), bool(multicoil), maps
        self.enc = nn.ModuleList([Encoder(2, chans, num_pools), Encoder(2, chans, num_pools)])
        self.dec = nn.ModuleList([Decoder(2, chans, num_pools), Decoder(num_classes, chans, num_pools)])
        self.stitches = nn.ModuleList(StitchUnit(subspaces) for _ in range(2 * num_pools + 1))
        # beta[t] weighs (first encoder level, last decoder level) of task t (0: reconstruction, 1: segmentation)
        self.beta = nn.Parameter(torch.tensor([[0.0, 1.0], [0.0, 1.0]])) if layer_weights else None

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        heads = {id(p) for d in self.dec for p in d.head.parameters()} | ({id(self.beta)} if self.beta is not None else set())
        return (p for p in self.parameters() if id(p) not in heads)

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None = None) -> ReconSegOutput:
        x0, _, _, scale = zero_filled_start(kspace, mask, sens_maps, self.multicoil, self.maps)
        size = tuple(x0.shape[-2:])
        inp, pad = pad_to(complex_to_channels(x0), self.num_pools)
        x = [inp, inp]
        skips: list[list[torch.Tensor]] = [[], []]
        stitch = iter(self.stitches)
        for level in range(self.num_pools):
            x = list(next(stitch)(*(self.enc[t].levels[level](x[t]) for t in range(2))))
            for t in range(2):
                skips[t].append(x[t])
                x[t] = nn.functional.avg_pool2d(x[t], kernel_size=2, stride=2)
        x = list(next(stitch)(*(self.enc[t].bottleneck(x[t]) for t in range(2))))
        for level in range(self.num_pools):
            x = list(next(stitch)(*(self.dec[t].convs[level](torch.cat([self.dec[t].ups[level](x[t]), skips[t][-1 - level]], 1))
                                    for t in range(2))))
        if self.beta is not None:
            x = [self.beta[t, 0] * skips[t][0] + self.beta[t, 1] * x[t] for t in range(2)]
        residual = unpad(self.dec[0].head(x[0]), pad, size).to(x0.real.dtype)
        logits = unpad(self.dec[1].head(x[1]), pad, size)
        return ReconSegOutput((x0 + channels_to_complex(residual)) * scale, logits)


@register("model", "cross_stitch")
class CrossStitchNet(_SoftSharing):
    """Reconstruction and segmentation U-Nets joined by cross-stitch units (module docstring)."""

    def __init__(self, num_classes: int = 8, chans: int = 16, num_pools: int = 3, multicoil: bool = True,
                 maps: Literal["given", "acs", "espirit"] = "acs"):
        super().__init__(num_classes, chans, num_pools, multicoil, maps, subspaces=1, layer_weights=False)


@register("model", "sluice")
class SluiceNet(_SoftSharing):
    """Sluice network: subspace mixing (``subspaces`` groups per column) and layer-combination weights."""

    def __init__(self, num_classes: int = 8, chans: int = 16, num_pools: int = 3, subspaces: int = 2,
                 multicoil: bool = True, maps: Literal["given", "acs", "espirit"] = "acs"):
        super().__init__(num_classes, chans, num_pools, multicoil, maps, subspaces=subspaces, layer_weights=True)
