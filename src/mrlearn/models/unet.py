"""The fastMRI baseline U-Net (Ronneberger et al. 2015 as configured by Zbontar et al. 2018).

Input/output ``[B, in_chans, H, W]`` -> ``[B, out_chans, H, W]`` real. Each level is two 3x3 convolutions
(no bias) each followed by instance norm and LeakyReLU(0.2) (dropout optional); downsampling is 2x2 average
pooling by default, as fastMRI's code (``fastmri/models/unet.py``) does, so the default network is fastMRI's
(``pool="max"``: max pooling, as drawn in the U-Net paper, a different network), upsampling a 2x2 transpose
convolution (+ instance norm, LeakyReLU) whose output is concatenated with the skip connection of the same
level. The last level ends with a 1x1 convolution (with bias) to ``out_chans``.
Channels double at every pooling level (``chans``, ``2 chans``, ...). Any ``H, W`` works: the input is
zero-padded to a multiple of ``2 ** num_pool_layers`` (centred; at least twice that, so the bottleneck keeps
2 x 2 pixels) and the output cropped back.

Parameter names are fastMRI's (``down_sample_layers.0.layers.0.weight``, ``conv.layers.4.weight``,
``up_transpose_conv.0.layers.0.weight``, ``up_conv.3.1.bias``, ...), so a fastMRI ``Unet`` state dict loads
directly. Checkpoints written by mrlearn before it used these names (``down.``, ``bottleneck.``,
``up_transpose.``, second convolution at ``layers.3``) still load: :func:`upgrade_legacy_keys` renames them, and
``load_state_dict`` does so through a pre-hook.
"""

from __future__ import annotations

from typing import Any, Iterable, Literal, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from mrlearn.registry import register


class ConvBlock(nn.Module):
    """Two (3x3 conv -> instance norm -> LeakyReLU(0.2) -> dropout) layers."""

    def __init__(self, in_chans: int, out_chans: int, drop_prob: float):
        super().__init__()
        layers: list[nn.Module] = []
        for cin in (in_chans, out_chans):  # 4 slots per layer, as fastMRI: the convolutions sit at 0 and 4
            layers += [nn.Conv2d(cin, out_chans, kernel_size=3, padding=1, bias=False), nn.InstanceNorm2d(out_chans),
                       nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(drop_prob) if drop_prob > 0 else nn.Identity()]
        self.layers = nn.Sequential(*layers)
        self.register_load_state_dict_pre_hook(_upgrade_hook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class UpBlock(nn.Module):
    """2x2 transpose convolution (stride 2) -> instance norm -> LeakyReLU(0.2): doubles H and W."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.layers = nn.Sequential(nn.ConvTranspose2d(in_chans, out_chans, kernel_size=2, stride=2, bias=False),
                                    nn.InstanceNorm2d(out_chans), nn.LeakyReLU(0.2, inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register("model", "unet")
class Unet(nn.Module):
    """fastMRI U-Net: ``num_pool_layers`` poolings, ``chans`` channels at the top level (fastMRI's baseline: 32 and 4)."""

    def __init__(self, in_chans: int = 1, out_chans: int = 1, chans: int = 32, num_pool_layers: int = 4,
                 drop_prob: float = 0.0, pool: Literal["avg", "max"] = "avg"):
        super().__init__()
        if min(in_chans, out_chans, chans, num_pool_layers) < 1:
            raise ValueError("in_chans, out_chans, chans and num_pool_layers must be at least 1")
        if pool not in ("max", "avg"):
            raise ValueError("pool must be 'avg' (fastMRI's code) or 'max'")
        self.pool = F.max_pool2d if pool == "max" else F.avg_pool2d
        self.in_chans, self.out_chans, self.num_pool_layers = in_chans, out_chans, num_pool_layers
        self.down_sample_layers = nn.ModuleList([ConvBlock(in_chans, chans, drop_prob)])
        ch = chans
        for _ in range(num_pool_layers - 1):
            self.down_sample_layers.append(ConvBlock(ch, ch * 2, drop_prob))
            ch *= 2
        self.conv = ConvBlock(ch, ch * 2, drop_prob)  # the bottleneck
        self.up_transpose_conv = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for level in range(num_pool_layers):
            self.up_transpose_conv.append(UpBlock(ch * 2, ch))
            if level < num_pool_layers - 1:
                self.up_conv.append(ConvBlock(ch * 2, ch, drop_prob))
            else:  # top level: conv block then the 1x1 output convolution
                self.up_conv.append(nn.Sequential(ConvBlock(ch * 2, ch, drop_prob),
                                                  nn.Conv2d(ch, out_chans, kernel_size=1, stride=1)))
            ch //= 2
        self.register_load_state_dict_pre_hook(_upgrade_hook)

    # the names these parts had before they took fastMRI's (read-only aliases)
    down = property(lambda self: self.down_sample_layers)
    bottleneck = property(lambda self: self.conv)
    up_transpose = property(lambda self: self.up_transpose_conv)

    @staticmethod
    def config_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, int] | None:
        """``in_chans``, ``out_chans``, ``chans``, ``num_pool_layers`` of the U-Net a state dict holds (its keys
        without prefix), or None when it does not hold one."""
        first = state_dict.get("down_sample_layers.0.layers.0.weight")
        pools = sum(1 for k in state_dict if k.startswith("down_sample_layers.") and k.endswith(".layers.0.weight"))
        last = state_dict.get(f"up_conv.{pools - 1}.1.weight")
        if not torch.is_tensor(first) or first.ndim != 4 or not torch.is_tensor(last) or last.ndim != 4:
            return None
        return {"in_chans": int(first.shape[1]), "out_chans": int(last.shape[0]), "chans": int(first.shape[0]),
                "num_pool_layers": pools}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"Unet expects [B, {self.in_chans}, H, W], got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = 2 ** self.num_pool_layers
        # a multiple of 2^pools, and at least twice it: the bottleneck keeps 2 x 2 pixels (instance norm needs > 1)
        ph, pw = max((-h) % m, 2 * m - h), max((-w) % m, 2 * m - w)
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        out = F.pad(x, pad) if (ph or pw) else x
        skips = []
        for block in self.down_sample_layers:
            out = block(out)
            skips.append(out)
            out = self.pool(out, kernel_size=2, stride=2)
        out = self.conv(out)
        for up, conv in zip(self.up_transpose_conv, self.up_conv):
            out = conv(torch.cat([up(out), skips.pop()], dim=1))
        if ph or pw:
            out = out[..., pad[2] : pad[2] + h, pad[0] : pad[0] + w]
        return out


_LEGACY_PARTS = {"down": "down_sample_layers", "bottleneck": "conv", "up_transpose": "up_transpose_conv"}


def _legacy_to_current(key: str) -> str:
    """A parameter name of mrlearn's earlier U-Net naming -> today's (fastMRI's); other names come back unchanged."""
    parts = [_LEGACY_PARTS.get(p, p) for p in key.split(".")]
    for i in range(len(parts) - 2):
        if parts[i] == "layers" and parts[i + 1] == "3" and parts[i + 2] == "weight":  # 2nd conv of a ConvBlock
            parts[i + 1] = "4"
    return ".".join(parts)


def upgrade_legacy_keys(state_dict: Mapping[str, Any], own_keys: Iterable[str]) -> dict[str, Any]:
    """``state_dict`` with the keys of mrlearn's earlier U-Net naming renamed to today's, where only the renamed
    key is one of ``own_keys`` (the model's own names): other keys, and keys the model has, stay as they are."""
    own = set(own_keys)
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        new = key if key in own else _legacy_to_current(key)
        out[new if new in own and new not in state_dict else key] = value
    return out


def _upgrade_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """``load_state_dict`` pre-hook: rename this module's legacy keys in place (see :func:`upgrade_legacy_keys`)."""
    own = {prefix + k for k in module.state_dict()}
    mine = {k: state_dict[k] for k in list(state_dict) if k.startswith(prefix)}
    upgraded = upgrade_legacy_keys(mine, own)
    if list(upgraded) != list(mine):
        for key in mine:
            del state_dict[key]
        state_dict.update(upgraded)
