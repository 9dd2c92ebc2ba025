"""Registry entry ``model: {name: layerwise, num_blocks, hidden, kernel_size, scheme}`` (plain torch module)."""

from __future__ import annotations

from mrlearn.errors import input_error
from mrlearn.layerwise.blocks import FeatureStackNet, LayerwiseNet
from mrlearn.registry import register


@register("model", "layerwise")
def layerwise(num_blocks: int = 5, hidden: int = 256, kernel_size: int = 7, scheme: str = "stream") -> LayerwiseNet:
    """Stack of ``num_blocks`` two-layer blocks (g: ``kernel_size``, ``hidden`` channels).

    ``scheme``: ``stream`` (``x + f(relu(g(x)))`` on the 2-channel image, each block kept whole) or ``drop_f``
    (the seed figure's greedy scheme: hidden features stacked, only the last block's 1 x 1 head used).
    """
    if scheme not in ("stream", "drop_f"):
        raise input_error("model.scheme", f"unknown value {scheme!r}", "choose stream or drop_f")
    cls = FeatureStackNet if scheme == "drop_f" else LayerwiseNet
    return cls(num_blocks=num_blocks, hidden=hidden, kernel_size=kernel_size)
