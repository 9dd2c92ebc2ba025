"""U-Net training throughput, peak memory and inference latency (prints a table; no asserts).

Implementations: ``mrlearn`` (max pooling, as the U-Net paper draws it), ``mrlearn-avg`` (average pooling, as the
fastMRI code), ``mrlearn-compiled`` (``mrlearn-avg`` compiled in place by ``torch.compile``, as
``trainer.compile: true`` does; its warm-up steps hold the compile time) and, with ``--reference-unet``,
``fastmri-ref``. Each round runs every implementation once (``--rounds``, interleaved); the table holds the median
over rounds and the ratio of training throughput to the reference's. Cases: the fastMRI baseline (320 x 320, chans 32, 4 pools, batch 1) and the demo network (128 x 128, chans 16,
3 pools, batch 2). Training = forward + L1 loss + backward + RMSprop step; inference = forward under no_grad in
eval mode. Each case runs in a fresh subprocess so peak memory is its own: CUDA ``max_memory_allocated`` on GPU,
the process's peak resident set size (ru_maxrss, includes the Python/torch runtime) on CPU.

Side by side with the fastMRI reference U-Net (``fastmri/models/unet.py``, needs only torch)::

    python benchmarks/train_throughput.py --reference-unet /path/to/fastMRI/fastmri/models/unet.py

Options: ``--device cpu|cuda``, ``--threads N`` (CPU intra-op threads), ``--steps``, ``--warmup``, ``--cases``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = {
    "fastmri320": {"size": (320, 320), "chans": 32, "pools": 4, "batch": 1},
    "demo128": {"size": (128, 128), "chans": 16, "pools": 3, "batch": 2},
}


def load_model(impl: str, reference: str | None, chans: int, pools: int):
    import torch  # noqa: F401

    if impl.startswith("mrlearn"):
        from mrlearn.models.unet import Unet

        model = Unet(1, 1, chans, pools, pool="max" if impl == "mrlearn" else "avg")
        if impl == "mrlearn-compiled":
            model.compile()
        return model
    spec = importlib.util.spec_from_file_location("reference_unet", reference)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.Unet(in_chans=1, out_chans=1, chans=chans, num_pool_layers=pools, drop_prob=0.0)


def reference_check(reference: str, impl: str = "mrlearn-avg") -> tuple[float, float]:
    """Max |difference| of eval-mode outputs between ``impl`` and the reference with copied weights, and max |output|."""
    import torch

    ref = load_model("fastmri-ref", reference, 8, 3).eval()
    ours = load_model(impl, None, 8, 3).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # the same parameter names as fastMRI's
    x = torch.randn(2, 1, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = ref(x)
        return float((ours(x) - out).abs().max()), float(out.abs().max())


def measure(impl: str, case: str, device: str, steps: int, warmup: int, threads: int, reference: str | None) -> dict:
    import torch

    if device == "cpu" and threads > 0:
        torch.set_num_threads(threads)  # benchmark script, not library code
    c = CASES[case]
    torch.manual_seed(0)
    model = load_model(impl, reference, c["chans"], c["pools"]).to(device)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    x = torch.randn(c["batch"], 1, *c["size"], device=device)
    y = torch.randn(c["batch"], 1, *c["size"], device=device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.l1_loss(model(x), y)
        loss.backward()
        opt.step()

    model.train()
    for _ in range(warmup):
        train_step()
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync()
    train_s = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    model.eval()
    xi = x[:1]
    with torch.no_grad():
        for _ in range(warmup):
            model(xi)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            model(xi)
        sync()
        infer_s = time.perf_counter() - t0
    return {"impl": impl, "case": case, "params": sum(p.numel() for p in model.parameters()),
            "train_slices_per_s": steps * c["batch"] / train_s, "peak_mib": peak / 2**20,
            "infer_ms_per_slice": 1000 * infer_s / steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (the compiled network compiles in them)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every implementation, interleaved")
    p.add_argument("--impls", nargs="+", default=["mrlearn", "mrlearn-avg", "mrlearn-compiled"],
                   choices=["mrlearn", "mrlearn-avg", "mrlearn-compiled"])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--reference-unet", help="path to fastMRI's fastmri/models/unet.py for a side-by-side run")
    p.add_argument("--one", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(measure(a.one[0], a.one[1], a.device, a.steps, a.warmup, a.threads, a.reference_unet)))
        return
    impls = list(a.impls) + (["fastmri-ref"] if a.reference_unet else [])
    if a.reference_unet:
        for impl in a.impls:
            if impl != "mrlearn":  # max pooling is a different network
                diff, top = reference_check(a.reference_unet, impl)
                print(f"equivalence: max |{impl} - reference| in eval mode with copied weights = {diff:.3g} "
                      f"(max |output| {top:.3g})")
    print(f"device {a.device}, threads {a.threads or 'default'}, {a.steps} timed steps after {a.warmup} warm-up, "
          f"{a.rounds} round(s) interleaved, medians")
    print(f"{'impl':<17} {'case':<11} {'params':>10} {'train slices/s':>15} {'vs ref':>7} {'peak MiB':>9} {'infer ms/slice':>15}")
    for case in a.cases:
        runs: dict[str, list[dict]] = {impl: [] for impl in impls}
        for _ in range(a.rounds):
            for impl in impls:
                cmd = [sys.executable, __file__, "--one", impl, case, "--device", a.device, "--threads", str(a.threads),
                       "--steps", str(a.steps), "--warmup", str(a.warmup)]
                if a.reference_unet:
                    cmd += ["--reference-unet", a.reference_unet]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    print(f"{impl:<17} {case:<11} failed: {res.stderr.strip().splitlines()[-1] if res.stderr else res.returncode}")
                    continue
                runs[impl].append(json.loads(res.stdout.strip().splitlines()[-1]))
        ref = runs.get("fastmri-ref") or []
        ref_rate = statistics.median(r["train_slices_per_s"] for r in ref) if ref else None
        for impl, rs in runs.items():
            if not rs:
                continue
            rate = statistics.median(r["train_slices_per_s"] for r in rs)
            ratio = f"{rate / ref_rate:.2f}x" if ref_rate else "-"
            print(f"{impl:<17} {case:<11} {rs[0]['params']:>10,} {rate:>15.2f} {ratio:>7} "
                  f"{statistics.median(r['peak_mib'] for r in rs):>9.0f} "
                  f"{statistics.median(r['infer_ms_per_slice'] for r in rs):>15.1f}")

if __name__ == "__main__":
    main()
