"""Peak memory of one training step, end-to-end vs layer-wise, each measured in a fresh process.

One step = forward, l2 loss, backward, Adam step on random ``[B, 2, H, W]`` inputs through
:class:`~mrlearn.layerwise.blocks.LayerwiseNet`:
  ``end_to_end``: all blocks with gradients;
  ``layerwise`` : the greedy step of the last (deepest) block: blocks ``1..N-1`` under ``no_grad``, block ``N``
                 with gradients (the step of method ``layerwise_greedy``).
CPU: peak RSS of the process during the step (``VmHWM``, reset just before the step through
``/proc/self/clear_refs``) minus its RSS once imports, model and optimizer exist (MiB).
CUDA: ``torch.cuda.max_memory_allocated`` during the step minus what was allocated before it (MiB); with
``budget_mib`` the process is capped (``set_per_process_memory_fraction``) and an out-of-memory step reports
``ok: False``. :func:`measure` runs :func:`probe` in a child process (``python -m mrlearn.layerwise.memory``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0: ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def probe(mode: str, batch: int, size: tuple[int, int], device: str = "cpu", blocks: int = 5, hidden: int = 256,
          kernel: int = 7, budget_mib: float | None = None) -> dict:
    """One training step in this process: ``{"ok", "oom", "peak_mib", "seconds"}``."""
    import torch

    from mrlearn.layerwise.blocks import LayerwiseNet

    torch.manual_seed(0)
    dev = torch.device(device)
    if dev.type == "cuda" and budget_mib is not None:
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_mib * 2**20 / total), dev)
    net = LayerwiseNet(blocks, hidden, kernel).to(dev)
    last = blocks - 1
    if mode == "end_to_end":
        params = list(net.parameters())
    else:
        net.freeze(last)
        params = list(net.blocks[last].parameters())
    opt = torch.optim.Adam(params, lr=1e-4)
    base = 0
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    base_rss = _status_kib("VmRSS")
    hwm_reset = _reset_peak_rss()
    t0 = time.perf_counter()
    try:
        x = torch.randn(batch, 2, *size, device=dev)
        target = torch.randn(batch, 2, *size, device=dev)
        out = net(x) if mode == "end_to_end" else net.blocks[last](net.frozen_features(x, last))
        torch.nn.functional.mse_loss(out, target).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    except torch.OutOfMemoryError:
        return {"ok": False, "oom": True}
    seconds = time.perf_counter() - t0
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    else:
        # VmHWM (reset above) is the peak of this process image only; ru_maxrss would also carry the RSS of the
        # parent this process was forked from (Linux keeps it across execve)
        hwm = _status_kib("VmHWM") if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = (hwm - base_rss) / 1024
    return {"ok": True, "oom": False, "peak_mib": peak, "seconds": seconds}


def measure(mode: str, batch: int, size: tuple[int, int], device: str = "cpu", blocks: int = 5, hidden: int = 256,
            kernel: int = 7, budget_mib: float | None = None, threads: int = 1) -> dict:
    """:func:`probe` in a fresh child process; on CPU ``ok`` also requires ``peak_mib <= budget_mib``."""
    cmd = [sys.executable, "-m", "mrlearn.layerwise.memory", "--mode", mode, "--batch", str(batch),
           "--size", str(size[0]), str(size[1]), "--device", device, "--blocks", str(blocks), "--hidden", str(hidden),
           "--kernel", str(kernel), "--threads", str(threads)]
    if budget_mib is not None:
        cmd += ["--budget-mib", str(budget_mib)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"ok": False, "oom": True, "error": (res.stderr.strip().splitlines() or [""])[-1]}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out.get("ok") and device == "cpu" and budget_mib is not None:
        out["ok"] = out["peak_mib"] <= budget_mib
    return out


def _main() -> int:
    p = argparse.ArgumentParser(prog="python -m mrlearn.layerwise.memory", description="one probe (see the module doc)")
    p.add_argument("--mode", choices=["end_to_end", "layerwise"], required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--size", type=int, nargs=2, default=[64, 64])
    p.add_argument("--device", default="cpu")
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--kernel", type=int, default=7)
    p.add_argument("--budget-mib", type=float, default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)  # a stand-alone probe process, not library code
    print(json.dumps(probe(a.mode, a.batch, tuple(a.size), a.device, a.blocks, a.hidden, a.kernel, a.budget_mib)))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
