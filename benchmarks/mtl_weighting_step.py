"""Step time of each multi-task weighting method relative to naive weighting (goal: <= 1.5x).

One optimizer step of a two-task ``mtl_unrolled`` network (hard sharing, first half of the cascades shared) on
random multi-coil k-space. "naive (one backward)" is the textbook step: forward both tasks, one backward of the
summed loss. Every method (equal, dwa, uncertainty, gradnorm, mgda, pcgrad, cagrad) goes through
``mtl.step.multitask_backward``: one forward + one backward per task, per-task gradients of the SHARED parameters
only, then the combination. Prints the median of ``--repeats`` timed steps after ``--warmup`` steps.

    python benchmarks/mtl_weighting_step.py [--size 64] [--coils 4] [--batch 2] [--cascades 4] [--chans 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mrlearn.mtl.networks import MultiTaskUnrolled
from mrlearn.mtl.step import multitask_backward
from mrlearn.mtl.weighting import build_weighting

METHODS = ["equal", "dwa", "uncertainty", "gradnorm", "mgda", "pcgrad", "cagrad"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--coils", type=int, default=4)
    p.add_argument("--batch", type=int, default=2, help="samples per task per step")
    p.add_argument("--cascades", type=int, default=4)
    p.add_argument("--chans", type=int, default=16)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = MultiTaskUnrolled(num_tasks=2, sharing="early", split=a.cascades // 2, cascades=a.cascades, chans=a.chans,
                              num_blocks=a.blocks).to(dev)
    b = 2 * a.batch
    kspace = torch.randn(b, a.coils, a.size, a.size, dtype=torch.complex64, device=dev)
    mask = torch.zeros(b, 1, 1, a.size, device=dev)
    mask[..., ::4] = 1
    mask[..., a.size // 2 - 4 : a.size // 2 + 4] = 1
    kspace = kspace * mask
    target = torch.rand(b, a.size, a.size, device=dev)
    task = torch.arange(b, device=dev) % 2
    idx = {t: torch.nonzero(task == t).flatten() for t in (0, 1)}
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def loss_of(t: int) -> torch.Tensor:
        i = idx[t]
        return (model(kspace[i], mask[i], None, task[i]).abs() - target[i]).abs().mean()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(step) -> float:
        for _ in range(a.warmup):
            step()
        times = []
        for _ in range(a.repeats):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def naive_step() -> None:
        opt.zero_grad()
        (loss_of(0) + loss_of(1)).backward()
        opt.step()

    base = timed(naive_step)
    shared = list(model.shared_parameters())
    n_shared = sum(p.numel() for p in shared)
    print(f"device {dev}, {a.size}x{a.size}, {a.coils} coils, {a.batch} samples per task, {a.cascades} cascades "
          f"(half shared), {sum(p.numel() for p in model.parameters())} parameters ({n_shared} shared), "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'method':<24} {'step (ms)':>10} {'x naive':>8}")
    print(f"{'naive (one backward)':<24} {base * 1e3:>10.1f} {1.0:>8.2f}")
    for name in METHODS:
        weighting = build_weighting(name, 2).to(dev)
        extra = [pp for pp in weighting.parameters()]
        wopt = torch.optim.Adam(list(model.parameters()) + extra, lr=1e-4)

        def step() -> None:
            wopt.zero_grad()
            multitask_backward({0: lambda: loss_of(0), 1: lambda: loss_of(1)}, weighting, shared)
            wopt.step()

        t = timed(step)
        print(f"{name:<24} {t * 1e3:>10.1f} {t / base:>8.2f}")


if __name__ == "__main__":
    main()
