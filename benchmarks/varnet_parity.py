"""E2E-VarNet parity with fastMRI's own code: same weights and input -> max |difference|; training-step time ratio.

Usage (a fastMRI checkout the user provides; only torch and numpy are needed)::

    python benchmarks/varnet_parity.py --reference /path/to/fastMRI/fastmri/models/varnet.py
    python benchmarks/varnet_parity.py --reference ... --threads 1 --cases tiny:4:32x32:2 knee:15:320x320:2

A case is ``name:coils:HxW:cascades`` (batch 1, regulariser U-Nets ``--chans``/``--pools``, sensitivity U-Net
``--sens-chans``/``--sens-pools``). Per case: both networks built with the same settings, mrlearn's weights copied
into fastMRI's with ``load_state_dict`` (the names are the same); random Gaussian k-space under a fastMRI-style 4x
random column mask (8 % centre), given to mrlearn as complex ``[B, C, H, W]`` and a ``[B, 1, 1, W]`` mask and to
fastMRI as real ``[B, C, H, W, 2]`` and a bool ``[B, 1, 1, W, 1]`` mask. Printed: max |difference| of the output
(absolute, and relative to max |output|) with the ACS width found from the mask and given, max relative
difference of the parameter gradients of ``output.mean()`` (also of each network to a float64 run of mrlearn's:
gradients through instance norms of small images are ill-conditioned, so float32 rounding alone moves them by up
to a few percent at 32 x 32 with 4 poolings), and the median time of a training step (forward +
backward) of each network, interleaved, with the ratio mrlearn / fastMRI. Without ``--reference``: says it needs
one and exits 0.

The reference is imported by file path: fastMRI's ``fastmri/__init__.py`` imports modules that need packages
mrlearn does not install, so stub parent packages are put in ``sys.modules`` and only ``varnet.py`` and what it uses
(``models/unet.py``, ``fftc.py``, ``math.py``, ``coil_combine.py``, ``data/subsample.py``, ``data/transforms.py``)
are executed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _package(name: str, path: Path) -> types.ModuleType:
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(path)]
    sys.modules[name] = pkg
    return pkg


def load_reference(varnet_py: str) -> types.ModuleType:
    """fastMRI's ``fastmri.models.varnet`` module from a checkout, without running ``fastmri/__init__.py``."""
    file = Path(varnet_py).expanduser().resolve()
    if file.is_dir():  # the checkout's root or its fastmri/ folder
        file = next((c for c in (file / "fastmri" / "models" / "varnet.py", file / "models" / "varnet.py") if c.is_file()), file)
    if not file.is_file():
        raise SystemExit(f"varnet_parity: --reference {varnet_py}: no fastmri/models/varnet.py there")
    root = file.parent.parent  # .../fastmri
    fastmri = _package("fastmri", root)
    for part in ("fftc", "math", "coil_combine"):
        module = _load(f"fastmri.{part}", root / f"{part}.py")
        setattr(fastmri, part, module)
    fastmri.fft2c, fastmri.ifft2c = sys.modules["fastmri.fftc"].fft2c_new, sys.modules["fastmri.fftc"].ifft2c_new
    for fn in ("complex_mul", "complex_conj", "complex_abs", "complex_abs_sq"):
        setattr(fastmri, fn, getattr(sys.modules["fastmri.math"], fn))
    fastmri.rss, fastmri.rss_complex = sys.modules["fastmri.coil_combine"].rss, sys.modules["fastmri.coil_combine"].rss_complex
    data = _package("fastmri.data", root / "data")
    fastmri.data = data
    _load("fastmri.data.subsample", root / "data" / "subsample.py")
    data.transforms = _load("fastmri.data.transforms", root / "data" / "transforms.py")
    _package("fastmri.models", root / "models")
    _load("fastmri.models.unet", root / "models" / "unet.py")
    return _load("fastmri.models.varnet", file)


def inputs(coils: int, h: int, w: int, seed: int = 0):
    """(complex k-space [1, C, H, W] masked, float mask [1, 1, 1, W], its fastMRI real/bool counterparts, n_low)."""
    import torch

    from mrlearn.physics.masks import RandomMaskFunc

    g = torch.Generator().manual_seed(seed)
    k = torch.complex(torch.randn(1, coils, h, w, generator=g), torch.randn(1, coils, h, w, generator=g))
    mask, n_low = RandomMaskFunc([0.08], [4])((1, h, w, 2), seed=seed)
    mask = mask.reshape(1, 1, 1, w).float()
    masked = k * mask + 0.0
    return masked, mask, torch.view_as_real(masked).contiguous(), mask.bool().reshape(1, 1, 1, w, 1), int(n_low)


def _step_time(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_case(ref_module: types.ModuleType, spec: str, args: argparse.Namespace) -> None:
    import torch

    from mrlearn.models.varnet import VarNet

    name, coils, size, cascades = spec.split(":")
    h, w = (int(v) for v in size.lower().split("x"))
    coils, cascades = int(coils), int(cascades)
    opts = dict(num_cascades=cascades, sens_chans=args.sens_chans, sens_pools=args.sens_pools, chans=args.chans,
                pools=args.pools)
    torch.manual_seed(0)
    ours = VarNet(**opts)
    theirs = ref_module.VarNet(**opts)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    k, mask, k_ref, mask_ref, n_low = inputs(coils, h, w)

    with torch.no_grad():
        rows = []
        for label, given in (("found", None), ("given", n_low)):
            a, b = ours(k, mask, None, given), theirs(k_ref, mask_ref, given)
            diff = float((a - b).abs().max())
            rows.append(f"{label} ACS: max|diff| {diff:.3g} (relative {diff / float(b.abs().max()):.3g}), "
                        f"outputs bit-identical: {torch.equal(a, b)}")

    def grads(model, *x):
        model.zero_grad(set_to_none=True)
        model(*x).mean().backward()
        return {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    def rel(x, y):  # max over parameters of max |x - y| / max |y|
        return max(float((x[n] - y[n]).abs().max() / y[n].abs().max().clamp_min(1e-30)) for n in y)

    ga, gb = grads(ours, k, mask), grads(theirs, k_ref, mask_ref)
    exact = VarNet(**opts).double()  # float64 run of the same network: how far float32 rounding alone goes
    exact.load_state_dict(ours.state_dict())
    g64 = {n: g.float() for n, g in grads(exact, k.to(torch.complex128), mask.double()).items()}
    grad_row = f"max relative |diff| {rel(ga, gb):.3g}; to float64: mrlearn {rel(ga, g64):.3g}, fastMRI {rel(gb, g64):.3g}"

    def step(model, *x):
        return lambda: model(*x).mean().backward()

    t_ours, t_ref = [], []
    for _ in range(args.rounds):  # interleaved, so drift of the machine's load hits both alike
        t_ours.append(_step_time(step(ours, k, mask), args.steps, args.warmup))
        t_ref.append(_step_time(step(theirs, k_ref, mask_ref), args.steps, args.warmup))
    a, b = statistics.median(t_ours), statistics.median(t_ref)
    print(f"{name}: {coils} coils {h}x{w}, {cascades} cascades (chans {args.chans}, pools {args.pools}, sens "
          f"{args.sens_chans}/{args.sens_pools}), ACS {n_low} lines")
    for row in rows:
        print(f"  output {row}")
    print(f"  gradients of output.mean(): {grad_row}")
    print(f"  training step (forward + backward): mrlearn {a * 1000:.1f} ms, fastMRI {b * 1000:.1f} ms, "
          f"ratio mrlearn/fastMRI {a / b:.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", help="fastMRI's fastmri/models/varnet.py (or the checkout's root)")
    p.add_argument("--cases", nargs="+", default=["tiny:4:32x32:2", "knee:15:320x320:2"],
                   help="name:coils:HxW:cascades (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default 1)")
    p.add_argument("--chans", type=int, default=18)
    p.add_argument("--pools", type=int, default=4)
    p.add_argument("--sens-chans", type=int, default=8)
    p.add_argument("--sens-pools", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median)")
    args = p.parse_args()
    if not args.reference:
        print("varnet_parity: needs --reference PATH to fastMRI's fastmri/models/varnet.py (a fastMRI checkout); "
              "nothing to compare")
        return 0
    import torch

    torch.set_num_threads(args.threads)  # benchmark script, not library code
    ref = load_reference(args.reference)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU, float32")
    for case in args.cases:
        run_case(ref, case, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
