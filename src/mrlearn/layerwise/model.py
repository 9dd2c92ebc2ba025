"""Registry entry ``model: {name: layerwise, num_blocks, hidden, kernel_size}`` (plain torch module)."""

from __future__ import annotations

from mrlearn.layerwise.blocks import LayerwiseNet
from mrlearn.registry import register


@register("model", "layerwise")
def layerwise(num_blocks: int = 5, hidden: int = 256, kernel_size: int = 7) -> LayerwiseNet:
    """Stack of ``num_blocks`` two-layer blocks ``x + f(relu(g(x)))`` (g: ``kernel_size``, ``hidden`` channels)."""
    return LayerwiseNet(num_blocks=num_blocks, hidden=hidden, kernel_size=kernel_size)
