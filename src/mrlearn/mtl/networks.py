"""Multi-task unrolled networks: hard and soft parameter sharing across tasks (plain torch; Liu et al. 2021; Misra et al. 2016; Liu et al. 2019).

``MultiTaskUnrolled.forward(kspace, mask, sens_maps, task) -> image``: the shapes of ``models.unrolled``
(kspace ``[B, C, H, W]`` masked, ``C = 1`` single-coil; mask broadcastable; maps ``[B, C, H, W]`` or None; complex
image ``[B, H, W]``) plus ``task`` ``[B]`` int64 (task index of every sample). The network is composed of the
pieces of ``models.unrolled`` (input checks, maps, ``x0 = A^H y`` scaled by ``max |x0|``, :class:`Cascade` =
``z = x + R(x)`` then data consistency, the cascade loop ``run_cascades``, the regulariser and DC builders), with
the cascades shared or task-specific according to ``sharing``:

==================  ============================================================================================
``all``             every cascade shared (one network; the single-task and pooled baselines use this)
``none``            independent per-task networks (nothing shared)
``early``           the first ``split`` cascades shared, the others task-specific (Liu et al.'s best scheme)
``middle``          ``split`` cascades in the middle shared, those before and after task-specific
``heads``           every cascade shared, then a task-specific residual head (conv-ReLU-conv, zero-initialised)
``split_decoder``   U-Net regulariser per cascade with a shared encoder (levels ``< split``; ``split =
                    num_pools + 1`` shares the bottleneck too) and per-task decoders; DC shared
``cross_stitch``    per-task networks; after each cascade listed in ``stitch_at`` the task images are mixed by
                    a learned ``T x T`` cross-stitch matrix (Misra et al. 2016), initialised to the identity
``mtan``            shared ResNet trunk per cascade; each task reads it through its own attention masks
                    ``a = sigmoid(conv1x1(relu(conv1x1([h_j, f_{j-1}]))))``, ``f_j = a * h_j`` (Liu et al. 2019)
==================  ============================================================================================

``shared_parameters()`` / ``task_parameters()`` split the parameters for gradient-based weighting (MGDA, PCGrad,
CAGrad, GradNorm): for ``cross_stitch`` every parameter is shared (the streams are coupled).
"""

from __future__ import annotations

from typing import Iterator, Literal

import torch
from torch import nn
from torch.nn import functional as F

from mrlearn.errors import input_error
from mrlearn.models.resnet import ResidualBlock
from mrlearn.models.unet import ConvBlock, UpBlock
from mrlearn.models.unrolled import (Cascade, build_dc, build_regulariser, check_inputs, coil_maps, measured_adjoint,
                                     normalised_start, run_cascades)
from mrlearn.physics.complex import channels_to_complex, complex_to_channels
from mrlearn.registry import register

WHERE = "model"
SCHEMES = ("all", "none", "early", "middle", "heads", "split_decoder", "cross_stitch", "mtan")


def shared_mask(scheme: str, cascades: int, split: int) -> list[bool]:
    """Which cascades are shared across tasks for the hard-sharing schemes (``all``/``none``/``early``/``middle``)."""
    if scheme in ("all", "heads", "split_decoder", "mtan"):
        return [True] * cascades
    if scheme in ("none", "cross_stitch"):
        return [False] * cascades
    k = max(0, min(int(split), cascades))
    if scheme == "early":
        return [i < k for i in range(cascades)]
    start = (cascades - k) // 2
    return [start <= i < start + k for i in range(cascades)]


class SplitUnet(nn.Module):
    """fastMRI U-Net (``models.unet`` blocks) with encoder levels ``< split`` shared and the rest per task.

    ``split`` counts encoder levels from the top: ``num_pools`` blocks then the bottleneck (``split = num_pools + 1``:
    the whole encoder is shared, decoders are per task). ``[B, 2, H, W] -> [B, 2, H, W]``.
    """

    def __init__(self, num_tasks: int, chans: int, num_pools: int, split: int, in_chans: int = 2, out_chans: int = 2):
        super().__init__()
        self.num_pools = num_pools
        self.split = max(0, min(int(split), num_pools + 1))
        widths_in = [in_chans] + [chans * 2 ** i for i in range(num_pools)]
        widths_out = [chans * 2 ** i for i in range(num_pools + 1)]  # last one: bottleneck
        levels = nn.ModuleList()
        for lvl in range(num_pools + 1):
            copies = 1 if lvl < self.split else num_tasks
            levels.append(nn.ModuleList(ConvBlock(widths_in[lvl], widths_out[lvl], 0.0) for _ in range(copies)))
        self.encoder = levels
        self.decoders = nn.ModuleList()
        for _ in range(num_tasks):
            ups, convs = nn.ModuleList(), nn.ModuleList()
            ch = chans * 2 ** (num_pools - 1)
            for lvl in range(num_pools):
                ups.append(UpBlock(ch * 2, ch))
                conv: nn.Module = ConvBlock(ch * 2, ch, 0.0)
                if lvl == num_pools - 1:
                    conv = nn.Sequential(conv, nn.Conv2d(ch, out_chans, kernel_size=1))
                convs.append(conv)
                ch //= 2
            self.decoders.append(nn.ModuleDict({"up": ups, "conv": convs}))

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** self.num_pools
        ph, pw = (-h) % m, (-w) % m
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        out = F.pad(x, pad) if (ph or pw) else x
        skips = []
        for lvl, copies in enumerate(self.encoder):
            block = copies[0 if len(copies) == 1 else task]
            out = block(out)
            if lvl < self.num_pools:
                skips.append(out)
                out = F.max_pool2d(out, kernel_size=2, stride=2)
        dec = self.decoders[task]
        for up, conv in zip(dec["up"], dec["conv"]):
            out = conv(torch.cat([up(out), skips.pop()], dim=1))
        if ph or pw:
            out = out[..., pad[2] : pad[2] + h, pad[0] : pad[0] + w]
        return out


class AttentionResNet(nn.Module):
    """MTAN-style ResNet: a shared trunk (``models.resnet`` blocks) and per-task attention masks on every block."""

    def __init__(self, num_tasks: int, chans: int, num_blocks: int, in_chans: int = 2, out_chans: int = 2):
        super().__init__()
        self.head = nn.Conv2d(in_chans, chans, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList(ResidualBlock(chans) for _ in range(max(1, num_blocks)))
        self.attention = nn.ModuleList(
            nn.ModuleList(nn.Sequential(nn.Conv2d(2 * chans, chans, 1), nn.ReLU(), nn.Conv2d(chans, chans, 1), nn.Sigmoid())
                          for _ in self.blocks)
            for _ in range(num_tasks))
        self.tail = nn.Conv2d(chans, out_chans, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        h = self.head(x)
        feat = h
        shared = h
        for block, att in zip(self.blocks, self.attention[task]):
            shared = block(shared)
            feat = att(torch.cat([shared, feat], dim=1)) * shared
        return self.tail(feat + h)


class CrossStitch(nn.Module):
    """``x_t <- sum_s alpha[t, s] x_s`` over task streams ``[T, B, ...]``; ``alpha`` initialised to the identity."""

    def __init__(self, num_tasks: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.eye(num_tasks))

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        flat = streams.reshape(streams.shape[0], -1)
        mixed = self.alpha.to(flat.real.dtype).to(flat.dtype) @ flat
        return mixed.reshape(streams.shape)


class TaskRegulariser(nn.Module):
    """Adapter: a task-aware regulariser (``SplitUnet``/``AttentionResNet``) or a plain one (``ResNet``/``Unet``)."""

    def __init__(self, net: nn.Module, task_aware: bool):
        super().__init__()
        self.net, self.task_aware = net, task_aware

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.net(x, task) if self.task_aware else self.net(x)


@register("model", "mtl_unrolled")
class MultiTaskUnrolled(nn.Module):
    """Unrolled network for ``num_tasks`` tasks with the sharing scheme ``sharing`` (see the module docstring).

    Parameters live in ``regs[i][k]`` / ``dcs[i][k]`` (cascade ``i``, copy ``k``: one copy when shared, one per task
    otherwise); the cascade of task ``t`` at step ``i`` is the :class:`~mrlearn.models.unrolled.Cascade` of that pair.
    """

    input_kind = "kspace"  # model-input protocol (models.protocol); forward also takes ``task``

    def __init__(
        self,
        num_tasks: int = 2,
        sharing: Literal["all", "none", "early", "middle", "heads", "split_decoder", "cross_stitch", "mtan"] = "early",
        split: int = 2,
        stitch_at: list[int] | None = None,
        cascades: int = 4,
        dc: Literal["gradient", "cg"] = "gradient",
        regulariser: Literal["resnet", "unet"] = "resnet",
        chans: int = 16,
        num_blocks: int = 2,
        num_pools: int = 2,
        eta_init: float = 1.0,
        lam_init: float = 0.05,
        cg_iters: int = 10,
        multicoil: bool = True,
        maps: Literal["given", "acs"] = "acs",
    ):
        super().__init__()
        if sharing not in SCHEMES:
            raise input_error(f"{WHERE}.sharing", f"unknown scheme {sharing!r}", f"choose one of: {', '.join(SCHEMES)}")
        for key, value, low in (("num_tasks", num_tasks, 1), ("cascades", cascades, 1), ("chans", chans, 1),
                                ("num_blocks", num_blocks, 0), ("num_pools", num_pools, 1), ("split", split, 0)):
            if value < low:
                raise input_error(f"{WHERE}.{key}", f"must be at least {low}, got {value}", "fix the value")
        if sharing == "split_decoder" and regulariser != "unet":
            raise input_error(f"{WHERE}.regulariser", "sharing 'split_decoder' needs the U-Net regulariser",
                              "set model.regulariser: unet")
        if sharing == "mtan" and regulariser != "resnet":
            raise input_error(f"{WHERE}.regulariser", "sharing 'mtan' needs the ResNet regulariser", "set model.regulariser: resnet")
        if sharing in ("early", "middle") and not 0 < split < cascades:
            raise input_error(f"{WHERE}.split", f"must be between 1 and cascades - 1 = {cascades - 1} for sharing "
                              f"{sharing!r}, got {split}", "choose how many cascades are shared")
        stitch_at = list(range(cascades - 1)) if stitch_at is None else [int(i) for i in stitch_at]
        if any(not 0 <= i < cascades for i in stitch_at):
            raise input_error(f"{WHERE}.stitch_at", f"cascade indices must be in [0, {cascades - 1}], got {stitch_at}",
                              "list cascade indices after which to mix the task streams")
        self.num_tasks, self.sharing, self.multicoil, self.maps = int(num_tasks), sharing, bool(multicoil), maps
        self.num_cascades = int(cascades)
        self.shared = shared_mask(sharing, cascades, split)

        def make_reg() -> TaskRegulariser:
            if sharing == "split_decoder":
                return TaskRegulariser(SplitUnet(num_tasks, chans, num_pools, split if split > 0 else num_pools + 1), True)
            if sharing == "mtan":
                return TaskRegulariser(AttentionResNet(num_tasks, chans, num_blocks), True)
            return TaskRegulariser(build_regulariser(regulariser, chans, num_blocks, num_pools), False)

        self.regs = nn.ModuleList()
        self.dcs = nn.ModuleList()
        for i in range(cascades):
            copies = 1 if self.shared[i] else num_tasks
            self.regs.append(nn.ModuleList(make_reg() for _ in range(copies)))
            self.dcs.append(nn.ModuleList(build_dc(dc, eta_init, lam_init, cg_iters) for _ in range(copies)))
        # Cascade views over (regs[i][k], dcs[i][k]); a plain list, so parameter names and order stay those above.
        self._cascades = [[Cascade(r, d) for r, d in zip(self.regs[i], self.dcs[i])] for i in range(cascades)]
        self.heads = None
        if sharing == "heads":
            self.heads = nn.ModuleList()
            for _ in range(num_tasks):
                head = nn.Sequential(nn.Conv2d(2, chans, 3, padding=1), nn.ReLU(), nn.Conv2d(chans, 2, 3, padding=1))
                nn.init.zeros_(head[2].weight)
                nn.init.zeros_(head[2].bias)
                self.heads.append(head)
        self.stitch_at = stitch_at if sharing == "cross_stitch" else []
        self.stitches = nn.ModuleDict({str(i): CrossStitch(num_tasks) for i in self.stitch_at})

    # ------------------------------------------------------------------ parameter groups
    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters used by more than one task (gradient-based weighting combines their per-task gradients)."""
        if self.sharing == "cross_stitch":
            yield from self.parameters()
            return
        for i in range(self.num_cascades):
            if len(self.regs[i]) == 1:
                reg = self.regs[i][0].net
                if isinstance(reg, SplitUnet):
                    yield from (p for lvl in reg.encoder if len(lvl) == 1 for p in lvl.parameters())
                elif isinstance(reg, AttentionResNet):
                    yield from (p for m in (reg.head, reg.blocks, reg.tail) for p in m.parameters())
                else:
                    yield from reg.parameters()
            if len(self.dcs[i]) == 1:
                yield from self.dcs[i][0].parameters()

    def task_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that only one task uses."""
        shared = {id(p) for p in self.shared_parameters()}
        yield from (p for p in self.parameters() if id(p) not in shared)

    # ------------------------------------------------------------------ forward
    def cascade(self, i: int, task: int) -> Cascade:
        """The cascade of ``task`` at step ``i`` (the shared one when step ``i`` is shared)."""
        copies = self._cascades[i]
        return copies[0 if len(copies) == 1 else task]

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor | None, sens_maps: torch.Tensor | None = None,
                task: torch.Tensor | None = None) -> torch.Tensor:
        check_inputs(kspace, mask, sens_maps, self.multicoil, "set model.maps: acs" if self.maps == "given" else None)
        b = kspace.shape[0]
        task = torch.zeros(b, dtype=torch.long, device=kspace.device) if task is None else task.to(kspace.device).long()
        if int(task.min()) < 0 or int(task.max()) >= self.num_tasks:
            raise input_error(f"{WHERE}.num_tasks", f"task index {int(task.max())} but the model has {self.num_tasks} task(s)",
                              "set model.num_tasks to the number of tasks")
        maps = coil_maps(kspace, mask, sens_maps, self.multicoil, "acs")
        x, y, scale = normalised_start(kspace, mask, maps)
        if self.sharing == "cross_stitch":
            out = self._forward_stitched(x, y, mask, maps)
            x = out[task, torch.arange(b, device=x.device)]
        else:
            result = torch.empty_like(x)
            for t in torch.unique(task).tolist():
                idx = torch.nonzero(task == t).flatten()
                sel = lambda v: None if v is None else (v if v.shape[0] != b else v[idx])  # noqa: E731
                result[idx] = self._forward_task(int(t), x[idx], y[idx], sel(mask), sel(maps))
            x = result
        return x * scale

    def _forward_task(self, t: int, x: torch.Tensor, y: torch.Tensor, mask, maps) -> torch.Tensor:
        x = run_cascades([self.cascade(i, t) for i in range(self.num_cascades)], x, y, mask, maps, t)
        if self.heads is not None:
            x = x + channels_to_complex(self.heads[t](complex_to_channels(x)).to(x.real.dtype))
        return x

    def _forward_stitched(self, x: torch.Tensor, y: torch.Tensor, mask, maps) -> torch.Tensor:
        """All task streams through every cascade, mixed by the cross-stitch units after the listed cascades."""
        streams = torch.stack([x] * self.num_tasks)
        steps = [self.cascade(i, t) for i in range(self.num_cascades) for t in range(self.num_tasks)]
        aty = measured_adjoint(steps, y, mask, maps)

        def step(i: int, t: int) -> torch.Tensor:
            cascade = steps[i * self.num_tasks + t]
            kw = {"aty": aty} if aty is not None and cascade.takes_aty else {}
            return cascade(streams[t], y, mask, maps, t, **kw)

        for i in range(self.num_cascades):
            streams = torch.stack([step(i, t) for t in range(self.num_tasks)])
            if i in self.stitch_at:
                streams = self.stitches[str(i)](streams)
        return streams
