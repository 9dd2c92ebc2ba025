"""Two-layer residual blocks and their stack (Ozturkler et al. 2021; Sahiner et al. ICLR 2021).

Block i maps a 2-channel image (real, imaginary) ``[B, 2, H, W]`` to a 2-channel image:
``x_{i+1} = f_i(relu(g_i(x_i))) + x_i`` with ``g_i`` a ``k x k`` conv (zero padding ``k // 2``, "same" size)
to ``hidden`` channels and ``f_i`` a 1 x 1 conv back to 2 channels. Neither conv has a bias, so a block is
exactly the two-layer ReLU network of the convex reformulation acting on ``k*k*2`` patch vectors
(see :mod:`mrlearn.layerwise.patches`). The stack keeps the 2-channel residual stream between blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mrlearn.errors import input_error


class TwoLayerBlock(nn.Module):
    """``x -> f(relu(g(x))) + x``; ``g``: ``channels -> hidden`` k x k conv, ``f``: 1 x 1 conv back, no biases.

    ``g`` has PyTorch's default (Kaiming-uniform) initialisation, ``f`` starts at zero (the block starts as
    the identity, so stacking a new block never makes the output worse before training).
    """

    def __init__(self, hidden: int = 256, kernel_size: int = 7, channels: int = 2):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise input_error("kernel_size", f"must be a positive odd integer, got {kernel_size}", "use e.g. 3, 5 or 7")
        if hidden < 1:
            raise input_error("hidden", f"must be >= 1, got {hidden}", "use e.g. 256")
        self.kernel_size = kernel_size
        self.g = nn.Conv2d(channels, hidden, kernel_size, padding=kernel_size // 2, bias=False)
        self.f = nn.Conv2d(hidden, channels, 1, bias=False)
        nn.init.zeros_(self.f.weight)  # a new block starts as the identity (x + 0)

    @property
    def hidden(self) -> int:
        return self.g.out_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden activations ``relu(g(x))`` ``[B, hidden, H, W]``."""
        return torch.relu(self.g(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(self.features(x)) + x

    def set_weights(self, g_weight: torch.Tensor, f_weight: torch.Tensor) -> None:
        """Replace both convs (the hidden width may change): ``g_weight [m, C, k, k]``, ``f_weight [C, m, 1, 1]``."""
        m, c, k, _ = g_weight.shape
        if k != self.kernel_size or c != self.g.in_channels or f_weight.shape != (c, m, 1, 1):
            raise ValueError(f"weights {tuple(g_weight.shape)}, {tuple(f_weight.shape)} do not fit this block")
        dev, dt = self.g.weight.device, self.g.weight.dtype
        self.g = nn.Conv2d(c, m, k, padding=k // 2, bias=False).to(dev, dt)
        self.f = nn.Conv2d(m, c, 1, bias=False).to(dev, dt)
        with torch.no_grad():
            self.g.weight.copy_(g_weight)
            self.f.weight.copy_(f_weight)


class GatedBlock(nn.Module):
    """Gated-ReLU block of the convex relaxation: ``x -> x + sum_i 1[h_i * x >= 0] (V_i * x)`` per output channel.

    ``gates``: fixed k x k filters ``[P, C, k, k]`` (a buffer, never trained); ``values``: ``[P, c, C, k, k]``
    (the convex solution ``V``: ``values[i, o]`` is the filter of gate ``i`` for output channel ``o``).
    Its objective equals the gated convex objective exactly (same gates by construction).
    """

    def __init__(self, gates: torch.Tensor, values: torch.Tensor):
        super().__init__()
        P, C, k, _ = gates.shape
        if values.shape[:1] != (P,) or values.shape[2:] != (C, k, k):
            raise ValueError(f"gates {tuple(gates.shape)} and values {tuple(values.shape)} do not match")
        self.kernel_size = k
        self.register_buffer("gates", gates.detach().clone())
        self.values = nn.Parameter(values.detach().clone())

    @property
    def hidden(self) -> int:
        return self.values.shape[0] * self.values.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        P, c = self.values.shape[:2]
        k = self.kernel_size
        mask = (F.conv2d(x, self.gates, padding=k // 2) >= 0).to(x.dtype)  # [B, P, H, W]
        lin = F.conv2d(x, self.values.reshape(P * c, *self.values.shape[2:]), padding=k // 2)
        lin = lin.reshape(x.shape[0], P, c, *x.shape[-2:])
        return x + (mask.unsqueeze(2) * lin).sum(dim=1)


class LayerwiseNet(nn.Module):
    """A stack of :class:`TwoLayerBlock` on the 2-channel residual stream: ``[B, 2, H, W] -> [B, 2, H, W]``."""

    def __init__(self, num_blocks: int = 5, hidden: int = 256, kernel_size: int = 7, channels: int = 2):
        super().__init__()
        if num_blocks < 1:
            raise input_error("num_blocks", f"must be >= 1, got {num_blocks}", "use e.g. 5")
        self.blocks = nn.ModuleList(TwoLayerBlock(hidden, kernel_size, channels) for _ in range(num_blocks))

    def __len__(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor, num_blocks: int | None = None) -> torch.Tensor:
        """Output after the first ``num_blocks`` blocks (all when None; 0 gives the input back)."""
        n = len(self.blocks) if num_blocks is None else num_blocks
        for block in self.blocks[:n]:
            x = block(x)
        return x

    @torch.no_grad()
    def frozen_features(self, x: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """Input of block ``num_blocks`` computed without gradients (the greedy scheme's frozen features)."""
        return self.forward(x, num_blocks).detach()

    def stage_output(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Output of block ``stage`` on the frozen features of the blocks before it (greedy training)."""
        return self.blocks[stage](self.frozen_features(x, stage))

    def freeze(self, upto: int) -> None:
        """``requires_grad = False`` for blocks ``< upto``, True for the others."""
        for i, block in enumerate(self.blocks):
            for p in block.parameters():
                p.requires_grad_(i >= upto)


class FeatureStackNet(LayerwiseNet):
    """The seed figure's greedy scheme ("train block i, freeze g_i, drop f_i"): features are stacked, not the image.

    ``h_0 = x`` (2 channels), ``h_i = relu(g_i(h_{i-1}))`` (``hidden`` channels; ``g_1``: 2 -> hidden, later
    ``g_i``: hidden -> hidden, k x k), and the output after ``n`` blocks is ``x + f_n(h_n)`` with ``f_n`` the 1 x 1
    head of block ``n``: only the last block's head is used, earlier heads are dropped. Greedy stage ``i`` trains
    ``g_i`` and ``f_i`` on the frozen ``h_{i-1}``. Same ``[B, 2, H, W] -> [B, 2, H, W]`` interface as the stack.
    """

    def __init__(self, num_blocks: int = 5, hidden: int = 256, kernel_size: int = 7, channels: int = 2):
        super().__init__(num_blocks, hidden, kernel_size, channels)
        for block in list(self.blocks)[1:]:  # later blocks read the hidden features
            k = block.kernel_size
            block.g = nn.Conv2d(hidden, hidden, k, padding=k // 2, bias=False)

    def features(self, x: torch.Tensor, num_blocks: int) -> torch.Tensor:
        for block in self.blocks[:num_blocks]:
            x = block.features(x)
        return x

    def forward(self, x: torch.Tensor, num_blocks: int | None = None) -> torch.Tensor:
        n = len(self.blocks) if num_blocks is None else num_blocks
        if n == 0:
            return x
        return x + self.blocks[n - 1].f(self.features(x, n))

    @torch.no_grad()
    def frozen_features(self, x: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """``h_{num_blocks}`` computed without gradients."""
        return self.features(x, num_blocks).detach()

    def stage_output(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        block = self.blocks[stage]
        return x + block.f(block.features(self.frozen_features(x, stage)))
