"""Unrolled-network training step: time and peak memory with and without gradient checkpointing.

Each setting runs in its own child process (so peak memory is that setting's own): build the model, synthetic
multi-coil k-space with a 4x random column mask and smooth unit-RSS maps, one warm-up step, then ``--steps``
timed Adam steps on an L1 magnitude loss. Reported per setting: median step time (s) and peak memory:
CPU ``ru_maxrss`` of the child minus its resident size just before the first step (MiB; the training-step
footprint: activations, gradients, optimizer state) and the absolute ``ru_maxrss``; CUDA
``torch.cuda.max_memory_allocated`` (MiB). Usage::

    python benchmarks/unrolled_step.py                      # demo config at 128 x 128 + varnet config at 320 x 320
    python benchmarks/unrolled_step.py --threads 1 --steps 2 --runs demo:8:128x128:2 varnet:15:320x320:1
    python benchmarks/unrolled_step.py --device cuda --runs varnet:15:640x368:1 ssdu:15:320x320:1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

#: preset -> UnrolledNet options: "demo" and "varnet" are the model sections of the shipped configs
#: (configs/unrolled_demo.yaml, configs/unrolled_varnet.yaml); "ssdu" is the SSDU/MoDL network of REFERENCE section 5
SHIPPED = {"demo": "unrolled_demo.yaml", "varnet": "unrolled_varnet.yaml"}
SSDU = dict(cascades=10, dc="cg", share_weights=True, regulariser="resnet", chans=64, num_blocks=15, cg_iters=10)
PRESETS = ("demo", "varnet", "ssdu")


def preset_options(name: str) -> dict:
    if name == "ssdu":
        return dict(SSDU)
    from importlib.resources import files

    import yaml

    model = yaml.safe_load((files("mrlearn") / "configs" / SHIPPED[name]).read_text())["model"]
    return {k: v for k, v in model.items() if k != "name"}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args: argparse.Namespace) -> None:
    import torch

    from mrlearn.models.unrolled import UnrolledNet
    from mrlearn.physics.sense import SenseOperator

    dev = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    opts = dict(preset_options(args.preset), checkpointing=args.checkpointing)
    model = UnrolledNet(**opts).to(dev)
    b, c, (h, w) = args.batch, args.coils, args.size
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    angles = torch.arange(c) * 2 * math.pi / c
    maps = torch.stack([torch.exp(-((yy - 1.3 * torch.sin(a)) ** 2 + (xx - 1.3 * torch.cos(a)) ** 2))
                        * torch.exp(1j * (a + xx)) for a in angles]).to(torch.complex64)
    maps = (maps / maps.abs().pow(2).sum(0, keepdim=True).sqrt()).expand(b, c, h, w).contiguous().to(dev)
    target = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1).float().expand(b, h, w).to(dev)
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(b, 1, 1, w, generator=g) < 0.2).float()
    mask[..., w // 2 - max(1, round(0.04 * w)) : w // 2 + max(1, round(0.04 * w))] = 1
    mask = mask.to(dev)
    kspace = SenseOperator(maps, mask).forward(target.to(torch.complex64))
    given = None if (opts.get("sens_refine") or opts.get("maps", "given") != "given") else maps
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = (model(kspace, mask, given).abs() - target).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cuda = dev.type == "cuda"
    base = _rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(args.steps + 1):
        if cuda:
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(dev)
        if i > 0:  # the first step is a warm-up
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out = {"preset": args.preset, "size": f"{h}x{w}", "coils": c, "batch": b, "checkpointing": args.checkpointing,
           "device": str(dev), "threads": torch.get_num_threads(), "step_s": statistics.median(times),
           "params": sum(p.numel() for p in model.parameters()), "rss_peak_mib": peak, "rss_step_mib": peak - base}
    if cuda:
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=["demo:8:128x128:2", "varnet:15:320x320:1"],
                   help="settings PRESET:COILS:HxW[:BATCH] (presets: %s)" % ", ".join(PRESETS))
    p.add_argument("--threads", type=int, default=0, help="torch threads in each child (0: torch's default)")
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="demo", help=argparse.SUPPRESS)
    p.add_argument("--coils", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(128, 128), help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        child(args)
        return
    rows = []
    for run in args.runs:
        preset, coils, size, *batch = run.split(":")
        for ckpt in (False, True):
            cmd = [sys.executable, __file__, "--child", "--preset", preset, "--coils", coils, "--size", size,
                   "--batch", batch[0] if batch else "1", "--steps", str(args.steps), "--device", args.device,
                   "--threads", str(args.threads)]
            cmd += ["--checkpointing"] if ckpt else []
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{run} checkpointing={ckpt}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            mem = f"cuda peak {r['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in r else \
                f"step RSS +{r['rss_step_mib']:.0f} MiB (peak RSS {r['rss_peak_mib']:.0f} MiB)"
            print(f"{r['preset']:7s} {r['coils']:2d} coils {r['size']:>9s} batch {r['batch']} {r['device']} "
                  f"({r['threads']} threads) params {r['params']:>9,d} checkpointing={str(ckpt):5s} "
                  f"step {r['step_s']:.3f} s  {mem}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
