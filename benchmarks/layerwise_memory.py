"""Peak memory of one training step and the largest batch within a memory budget: end-to-end vs layer-wise.

Network: :class:`mrlearn.layerwise.blocks.LayerwiseNet` (default 5 blocks, 256 channels, 7 x 7; seed 001).
One step = forward, l2 loss, backward, Adam step, on random ``[B, 2, H, W]`` inputs.
  end-to-end : all blocks with gradients.
  layer-wise : the greedy step of the last block (the deepest, worst case): blocks 1..N-1 under no_grad,
               block N with gradients (the same step as ``layerwise_greedy``).
Every probe runs in its own process (``mrlearn.layerwise.memory.measure``); this script bisects the batch size.
  CPU : memory = peak RSS of the child during the step (``VmHWM`` reset before the step) minus its RSS after
        imports, model and optimizer were built (so the budget is about the step itself); a batch fits when that
        is <= the budget.
  CUDA: memory = ``torch.cuda.max_memory_allocated`` of the step; the child also caps the process at the budget
        (``set_per_process_memory_fraction``) so a batch fits when the step runs without an out-of-memory error.

  python benchmarks/layerwise_memory.py --device cpu --budget-mib 1024 --size 64 64
  python benchmarks/layerwise_memory.py --device cuda --budget-mib 12288 --size 320 320
"""

from __future__ import annotations

import argparse
import sys

from mrlearn.layerwise.memory import measure


def run_probe(args, mode: str, batch: int) -> dict:
    return measure(mode, batch, tuple(args.size), args.device, args.blocks, args.hidden, args.kernel,
                   args.budget_mib, args.threads)


def largest_batch(args, mode: str) -> tuple[int, dict]:
    """Largest batch whose step fits the budget: doubling, then bisection (one process per probe)."""
    lo, hi, seen = 0, 1, {}
    while True:
        r = run_probe(args, mode, hi)
        seen[hi] = r
        print(f"  {mode:10s} batch {hi:5d}: " + (f"{r['peak_mib']:9.1f} MiB" if "peak_mib" in r else "out of memory")
              + ("" if r["ok"] else "  (over budget)"), flush=True)
        if not r["ok"]:
            break
        lo, hi = hi, hi * 2
        if hi > args.max_batch:
            return lo, seen
    while hi - lo > 1:
        mid = (lo + hi) // 2
        r = run_probe(args, mode, mid)
        seen[mid] = r
        print(f"  {mode:10s} batch {mid:5d}: " + (f"{r['peak_mib']:9.1f} MiB" if "peak_mib" in r else "out of memory")
              + ("" if r["ok"] else "  (over budget)"), flush=True)
        lo, hi = (mid, hi) if r["ok"] else (lo, mid)
    return lo, seen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--budget-mib", type=float, default=1024.0, help="memory budget of one step (MiB)")
    p.add_argument("--size", type=int, nargs=2, default=[64, 64], help="image size H W")
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--kernel", type=int, default=7)
    p.add_argument("--max-batch", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1, help="torch threads in each probe (CPU)")
    p.add_argument("--peak-batch", type=int, default=4, help="batch for the peak-memory comparison")
    args = p.parse_args()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("CUDA is not available: use --device cpu", file=sys.stderr)
            return 2
        name = torch.cuda.get_device_name(0)
    else:
        name = "CPU"
    print(f"layer-wise memory benchmark on {name}: {args.blocks} blocks, {args.hidden} channels, "
          f"{args.kernel} x {args.kernel}, images {args.size[0]} x {args.size[1]}, budget {args.budget_mib:.0f} MiB")
    peaks = {m: run_probe(args, m, args.peak_batch) for m in ("end_to_end", "layerwise")}
    for m, r in peaks.items():
        print(f"peak memory of one step, batch {args.peak_batch}: {m:10s} "
              + (f"{r['peak_mib']:.1f} MiB ({r['seconds']:.2f} s)" if "peak_mib" in r else "out of memory"))
    best = {}
    for m in ("end_to_end", "layerwise"):
        best[m], _ = largest_batch(args, m)
    print(f"largest batch within {args.budget_mib:.0f} MiB: end-to-end {best['end_to_end']}, layer-wise {best['layerwise']}")
    if best["end_to_end"] > 0:
        print(f"ratio layer-wise / end-to-end: {best['layerwise'] / best['end_to_end']:.2f} "
              f"({100 * (best['layerwise'] / best['end_to_end'] - 1):+.0f} % batch; seed 001: > +60 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
