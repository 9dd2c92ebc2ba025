"""What needs a GPU, measured in one command; prints one table.

    python benchmarks/gpu_check.py --fastmri-path ~/src/fastMRI      # everything
    python benchmarks/gpu_check.py --only unet --steps 50              # one part

Parts (``--only`` picks some):
  ``unet``      U-Net training throughput (images/s, ms/step) and peak CUDA memory, fp32 and bf16 autocast, for
                mrlearn's U-Net and - side by side - the fastMRI reference U-Net, imported from the user's copy of
                fastMRI (``--fastmri-path``: the repository root or its ``fastmri/models/unet.py``; nothing of it is
                shipped here). Same layout (1 -> 1 channel, 32 channels, 4 poolings), batch ``--batch`` of
                ``--size`` images, L1 loss, RMSprop. Then ``--ssim-steps`` steps of each model on the same synthetic
                de-aliasing task (smooth random objects, 4x column undersampling, zero-filled input) and the fastMRI
                SSIM on held-out images, so a faster setting is also seen to learn as well.
  ``unrolled``  an unrolled VarNet-size training step with and without gradient checkpointing
                (``benchmarks/unrolled_step.py --device cuda``: step time and peak CUDA memory).
  ``convex``    one convex layer-wise block (gated, 128 sign patterns, 7 x 7 patches of a 2-channel image) solved by
                FISTA to the tolerance 1e-6 on the GPU and on the CPU (``--convex-rows`` patch rows each): seconds,
                iterations, the ratio of the times and the relative difference of the final objectives; then the
                GPU alone at the ``layerwise_study_gpu`` size (96 000 rows).
  ``ddp``       ``mrlearn train`` of the U-Net demo over all visible GPUs (DDP, NCCL) when there are two or more:
                wall time of ``--ddp-steps`` steps against one GPU.
  ``presets``   the first ``--preset-minutes`` minutes of each shipped ``*_gpu`` study preset
                (``mrlearn study NAME``): runs finished and the last line it printed.

Without a CUDA GPU it prints one line and exits 0. Timings use ``torch.cuda.synchronize``; peak memory is
``torch.cuda.max_memory_allocated`` after a reset, per setting.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS = ("unet", "unrolled", "convex", "ddp", "presets")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " See the module docstring for the parts.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fastmri-path", help="fastMRI checkout (root) or its fastmri/models/unet.py: reference U-Net")
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)")
    p.add_argument("--batch", type=int, default=8, help="U-Net batch size (default 8)")
    p.add_argument("--size", type=int, default=320, help="U-Net image size (square; default 320, fastMRI's crop)")
    p.add_argument("--steps", type=int, default=30, help="timed U-Net steps per setting (after 5 warm-up steps)")
    p.add_argument("--ssim-steps", type=int, default=300, help="steps of the same-steps SSIM check (0: skip)")
    p.add_argument("--convex-rows", type=int, default=20000, help="patch rows of the GPU vs CPU convex solve")
    p.add_argument("--ddp-steps", type=int, default=60, help="optimiser steps of the DDP check")
    p.add_argument("--preset-minutes", type=float, default=3.0, help="minutes given to each _gpu study preset")
    p.add_argument("--out", help="folder for the DDP and preset runs (default: a temporary folder)")
    return p.parse_args(argv)


def no_gpu() -> str | None:
    """One line saying why nothing can be measured, or None when a CUDA GPU is visible."""
    try:
        import torch
    except ImportError:
        return "gpu_check: torch is not installed; nothing to measure"
    if not torch.cuda.is_available():
        return "gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); nothing to measure"
    return None


# --- U-Net throughput -----------------------------------------------------------------------------------------------

def load_fastmri_unet(path: str) -> Any:
    """The ``Unet`` class of a fastMRI checkout (root folder or the ``unet.py`` file), imported from that file."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_file() else [p / "fastmri" / "models" / "unet.py", p / "models" / "unet.py", p / "unet.py"]
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        raise SystemExit(f"gpu_check: --fastmri-path {path}: no fastmri/models/unet.py there")
    spec = importlib.util.spec_from_file_location("fastmri_reference_unet", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Unet


def train_steps(model: Any, precision: str, x: Any, y: Any, steps: int, warmup: int = 5) -> dict[str, float]:
    """Time ``steps`` L1/RMSprop steps on fixed tensors; images/s, ms/step and peak CUDA memory (MiB)."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.l1_loss(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"images/s": x.shape[0] * steps / dt, "ms/step": 1000 * dt / steps,
            "peak MiB": torch.cuda.max_memory_allocated() / 2**20}


def dealias_batch(n: int, size: int, gen: Any) -> tuple[Any, Any]:
    """Smooth random objects (sums of Gaussians) and their 4x column-undersampled zero-filled magnitudes."""
    import torch

    dev = "cuda"
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size, device=dev), torch.linspace(-1, 1, size, device=dev), indexing="ij")
    img = torch.zeros(n, size, size, device=dev)
    for _ in range(6):
        c = torch.rand(n, 2, 1, 1, device=dev, generator=gen) - 0.5
        s = 0.05 + 0.3 * torch.rand(n, 1, 1, device=dev, generator=gen)
        a = 0.3 + torch.rand(n, 1, 1, device=dev, generator=gen)
        img += a * torch.exp(-((yy - c[:, 0]) ** 2 + (xx - c[:, 1]) ** 2) / (2 * s * s))
    mask = torch.rand(size, device=dev, generator=gen) < 0.2
    mask[size // 2 - size // 25: size // 2 + size // 25] = True
    k = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(img, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))
    zf = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k * mask, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)).abs()
    scale = zf.amax(dim=(-2, -1), keepdim=True)
    return (zf / scale)[:, None], (img / scale)[:, None]


def same_steps_ssim(make: Any, precision: str, steps: int, size: int, batch: int) -> float:
    """fastMRI SSIM on 16 held-out images after ``steps`` steps on the synthetic de-aliasing task (seeded)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from mrlearn.evaluation.metrics import ssim

    torch.manual_seed(0)
    model = make().cuda()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    gen = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(steps):
        x, y = dealias_batch(batch, size, gen)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.l1_loss(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    x, y = dealias_batch(16, size, torch.Generator(device="cuda").manual_seed(12345))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        pred = model(x).float()
    gt, out = y[:, 0].cpu().numpy().astype(np.float64), pred[:, 0].cpu().numpy().astype(np.float64)
    return float(np.mean([ssim(gt[i:i + 1], out[i:i + 1]) for i in range(gt.shape[0])]))


def unet_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from mrlearn.models.unet import Unet

    makers = {"mrlearn U-Net": lambda: Unet(1, 1, chans=32, num_pool_layers=4)}
    if args.fastmri_path:
        ref = load_fastmri_unet(args.fastmri_path)
        makers["fastMRI U-Net"] = lambda: ref(in_chans=1, out_chans=1, chans=32, num_pool_layers=4, drop_prob=0.0)
    precisions = ["fp32"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    rows = []
    for name, make in makers.items():
        for precision in precisions:
            torch.manual_seed(0)
            model = make().cuda()
            x = torch.randn(args.batch, 1, args.size, args.size, device="cuda")
            y = torch.randn_like(x)
            m = train_steps(model, precision, x, y, args.steps)
            row = {"check": "U-Net training", "setting": f"{name} {precision} batch {args.batch} {args.size}px", **m}
            if args.ssim_steps:
                row["SSIM"] = same_steps_ssim(make, precision, args.ssim_steps, min(args.size, 128), args.batch)
            rows.append(row)
            del model, x, y
            torch.cuda.empty_cache()
    base = next((r for r in rows if r["setting"].startswith("fastMRI U-Net fp32")), None)
    for r in rows:
        if base is not None:
            r["x fastMRI fp32"] = r["images/s"] / base["images/s"]
    return rows


# --- subprocess parts -----------------------------------------------------------------------------------------------

def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
        return res.returncode, res.stdout + res.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, text, time.perf_counter() - t0


def unrolled_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    code, text, _ = _run([sys.executable, str(HERE / "unrolled_step.py"), "--device", "cuda", "--steps", "5",
                          "--runs", "varnet:15:640x368:1"], timeout=1800)
    lines = [ln for ln in text.splitlines() if ln.startswith("[")]
    if code != 0 or not lines:
        return [{"check": "unrolled step", "setting": "varnet 15 coils 640x368", "note": f"failed: {text[-300:]}"}]
    return [{"check": "unrolled step", "setting": f"varnet 15 coils {r['size']} checkpointing={r['checkpointing']}",
             "ms/step": 1000 * r["step_s"], "peak MiB": r.get("cuda_peak_mib", math.nan)} for r in json.loads(lines[-1])]


def _convex_solve(rows: int, device: str) -> dict[str, Any]:
    """One seeded gated block problem of ``rows`` patch rows solved on ``device``: seconds, iterations, objective."""
    import torch

    from mrlearn.layerwise.convex import ConvexProblem, sample_gates, solve_convex_report

    gen = torch.Generator().manual_seed(0)
    Y = torch.randn(rows, 2 * 7 * 7, generator=gen)
    X = 0.1 * torch.tanh(Y[:, :2] + Y[:, 48:50]) + 0.01 * torch.randn(rows, 2, generator=gen)
    Y, X = Y.to(device), X.to(device)
    H, G = sample_gates(Y, 128, gen)
    problem = ConvexProblem(Y=Y, X=X, G=G, beta=1e-4, variant="gated", H=H)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    sol = solve_convex_report(problem, max_iter=20000, tol=1e-6, generator=gen)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "iterations": sol.iterations, "objective": problem.objective(sol.U),
            "converged": sol.converged}


def convex_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    gpu, cpu = _convex_solve(args.convex_rows, "cuda"), _convex_solve(args.convex_rows, "cpu")
    diff = abs(gpu["objective"] - cpu["objective"]) / abs(cpu["objective"])
    for name, r in (("GPU", gpu), ("CPU", cpu)):
        rows.append({"check": "convex block", "setting": f"{name}, {args.convex_rows} rows, {r['iterations']} it",
                     "seconds": r["seconds"], "note": f"objective {r['objective']:.6g}, tolerance met {r['converged']}"})
    rows[0]["note"] += f"; CPU/GPU time {cpu['seconds'] / gpu['seconds']:.3g}x, objectives differ by {diff:.2e}"
    big = _convex_solve(96000, "cuda")
    rows.append({"check": "convex block", "setting": f"GPU, 96000 rows, {big['iterations']} it", "seconds": big["seconds"],
                 "note": f"tolerance met {big['converged']}"})
    return rows


def _train_cmd(out: Path, devices: int, steps: int) -> list[str]:
    return [sys.executable, "-m", "mrlearn.cli", "train", "--config", "unet_demo", "--out", str(out),
            "--accelerator", "gpu", "--devices", str(devices), "--strategy", "ddp" if devices > 1 else "auto",
            "--set", f"trainer.max_steps={steps}", "--set", "trainer.max_epochs=1000",
            "--set", "trainer.progress_bar=false"]


def ddp_rows(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    import torch

    n = torch.cuda.device_count()
    if n < 2:
        return [{"check": "DDP (NCCL)", "setting": f"{n} GPU visible", "note": "skipped: needs 2 or more GPUs"}]
    rows = []
    for devices in (1, n):
        code, text, seconds = _run(_train_cmd(work / f"ddp{devices}", devices, args.ddp_steps), timeout=3600)
        metrics = {}
        mfile = work / f"ddp{devices}" / "metrics.json"
        if mfile.is_file():
            metrics = json.loads(mfile.read_text()).get("final", {})
        rows.append({"check": "DDP (NCCL)", "setting": f"U-Net demo, {devices} GPU(s), {args.ddp_steps} steps",
                     "seconds": seconds, "SSIM": metrics.get("val_ssim", metrics.get("ssim", math.nan)),
                     "note": "ok" if code == 0 else f"exit {code}: {text.strip().splitlines()[-1:]}"})
    return rows


def preset_rows(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from importlib.resources import files

    presets = sorted(p.name[:-5] for p in (files("mrlearn") / "configs").iterdir() if p.name.endswith("_gpu.yaml"))
    rows = []
    for name in presets:
        out = work / name
        code, text, seconds = _run([sys.executable, "-m", "mrlearn.cli", "study", name, "--out", str(out)],
                                   timeout=60 * args.preset_minutes)
        done = len(list(out.glob("runs/*/result.json")))
        last = next((ln for ln in reversed(text.strip().splitlines()) if ln.strip()), "")
        state = "finished" if code == 0 else "stopped at the time limit" if code == 124 else f"exit {code}"
        rows.append({"check": "_gpu preset", "setting": name, "seconds": seconds, "runs done": done,
                     "note": f"{state}; {last[:120]}"})
    return rows or [{"check": "_gpu preset", "setting": "-", "note": "no *_gpu presets shipped"}]


# --- table ----------------------------------------------------------------------------------------------------------

COLUMNS = ("check", "setting", "images/s", "ms/step", "peak MiB", "x fastMRI fp32", "SSIM", "seconds", "runs done", "note")


def format_table(rows: list[dict[str, Any]]) -> str:
    """One plain-text table of every row (missing cells blank, floats with 4 significant digits)."""
    cols = [c for c in COLUMNS if any(c in r for r in rows)]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = no_gpu()
    if why is not None:
        print(why)
        return 0
    import torch

    print(f"gpu_check: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}",
          flush=True)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    rows: list[dict[str, Any]] = []
    if "unet" in args.only:
        rows += unet_rows(args)
    if "unrolled" in args.only:
        rows += unrolled_rows(args)
    if "convex" in args.only:
        rows += convex_rows(args)
    if "ddp" in args.only:
        rows += ddp_rows(args, work)
    if "presets" in args.only:
        rows += preset_rows(args, work)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
