"""Voxel-wise IVIM fitting speed and objective: mrlearn MLE / NLLS vs dipy IvimModel vs per-voxel scipy.

Usage: python benchmarks/qmri_fit.py [--voxels 10000] [--subset 300] [--threads 2] [--device cpu]
Data: common IVIM (S0 [f e^{-bD*} + (1-f) e^{-bD}]), Epstein protocol b = 0..800 s/mm^2, parameters uniform in
S0 [0.8, 1.2], f [0.1, 0.5], D [0.4, 3] um^2/ms, D* [10, 150] um^2/ms, Rician noise at SNR 30 (sigma = 1/30).
dipy and scipy are timed on the first --subset voxels and their voxels/s extrapolated; every objective is
reported on that same subset (mean Rician NLL with the known sigma, and mean 0.5 * sum of squares).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.optimize
import torch

from mrlearn.qmri.fit import fit_voxels, segmented_init
from mrlearn.qmri.likelihood import rician_nll, sse
from mrlearn.qmri.networks import IvimMLP
from mrlearn.qmri.signal import add_noise, get_model, sample_uniform

BVALS = [0, 10, 20, 30, 50, 80, 100, 200, 400, 800]
RANGES = {"S0": (0.8, 1.2), "f": (0.1, 0.5), "D": (0.4, 3.0), "Dstar": (10.0, 150.0)}


def scipy_mle(signals: np.ndarray, b: torch.Tensor, sigma: float, x0: np.ndarray, lo, hi) -> np.ndarray:
    """Per-voxel L-BFGS-B on the same Rician NLL (numerical gradients), from the segmented initial guess."""
    fn, _ = get_model("ivim")
    out = np.empty_like(x0)
    for i in range(signals.shape[0]):
        m = torch.from_numpy(signals[i])

        def nll(p):
            return float(rician_nll(m, fn(torch.from_numpy(p)[None], b)[0], sigma))

        out[i] = scipy.optimize.minimize(nll, x0[i], method="L-BFGS-B", bounds=list(zip(lo, hi))).x
    return out


def dipy_fit(signals: np.ndarray, bvals: list[float], method: str) -> np.ndarray | str:
    """dipy IvimModel params converted to (S0, f, D, D*) with D in um^2/ms, or a reason it could not run."""
    try:
        from dipy.core.gradients import gradient_table
        from dipy.reconst.ivim import IvimModel
    except ImportError as exc:
        return f"dipy unavailable ({exc})"
    b = np.asarray(bvals, dtype=float)
    vecs = np.zeros((b.size, 3))
    vecs[b > 0, 0] = 1.0
    try:
        gtab = gradient_table(b, bvecs=vecs, b0_threshold=0)
    except TypeError:
        gtab = gradient_table(b, vecs, b0_threshold=0)
    try:
        model = IvimModel(gtab, fit_method=method)
        fit = model.fit(signals)
    except Exception as exc:  # noqa: BLE001 - report and go on
        return f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:100]}"
    p = np.asarray(fit.model_params).reshape(-1, 4)  # S0, f, D*, D in mm^2/s
    return np.stack([p[:, 0], p[:, 1], p[:, 3] * 1e3, p[:, 2] * 1e3], -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", type=int, default=10000)
    ap.add_argument("--subset", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    b = torch.tensor(BVALS, dtype=torch.float64)
    fn, spec = get_model("ivim")
    theta = sample_uniform(RANGES, spec.names, args.voxels, g)
    sigma = 1 / 30
    sig = add_noise(fn(theta, b), 30, generator=g)
    sub = slice(0, args.subset)
    print(f"{args.voxels} voxels, Epstein protocol, SNR 30, torch threads {torch.get_num_threads()}, device {args.device}; "
          f"dipy/scipy timed on {args.subset} voxels")

    def report(name, params, seconds, n):
        p = torch.as_tensor(params, dtype=torch.float64)[: args.subset]
        pred = fn(p, b)
        nll = rician_nll(sig[sub], pred, sigma).mean().item()
        ls = sse(sig[sub], pred).mean().item()
        print(f"{name:24s} {n / seconds:12.0f} voxels/s  ({n} voxels in {seconds:.2f} s)  "
              f"mean Rician NLL {nll:.5f}  mean SSE {ls:.6f}")
        return n / seconds, nll

    rates = {}
    dev_sig = sig.to(args.device)
    for obj in ("mle", "nlls"):
        fit_voxels(dev_sig[:50], b, "ivim", obj, sigma=sigma)  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = fit_voxels(dev_sig, b, "ivim", obj, sigma=sigma)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rates[obj] = report(f"mrlearn {obj}", r.params.cpu(), dt, args.voxels)
        print(f"{'':24s} converged {r.converged.float().mean().item():.4f}, {r.iterations} iterations")
    lo, hi = spec.lower, spec.upper
    x0 = segmented_init(sig[sub], b, "ivim", torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)).numpy()
    t0 = time.perf_counter()
    ps = scipy_mle(sig[sub].numpy(), b, sigma, x0, lo, hi)
    rates["scipy"] = report("scipy L-BFGS-B MLE", ps, time.perf_counter() - t0, args.subset)
    for method in ("trr", "VarPro"):
        t0 = time.perf_counter()
        pd = dipy_fit(sig[sub].numpy(), BVALS, method)
        dt = time.perf_counter() - t0
        if isinstance(pd, str):
            print(f"{'dipy ' + method:24s} not run: {pd}")
            continue
        rates[f"dipy_{method}"] = report(f"dipy IvimModel {method}", pd, dt, args.subset)
    net = IvimMLP(len(BVALS)).to(args.device).eval()
    x = sig.float().to(args.device)
    with torch.no_grad():
        net(x)
        t0 = time.perf_counter()
        reps = 20
        for _ in range(reps):
            net(x)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    print(f"{'network inference':24s} {reps * args.voxels / dt:12.0f} voxels/s  (MLP 10-10-10-10-4, {reps} x {args.voxels})")
    for ours in ("mle", "nlls"):
        for peer in [k for k in rates if k not in ("mle", "nlls")]:
            print(f"ratio mrlearn {ours} / {peer}: {rates[ours][0] / rates[peer][0]:.1f}x speed, "
                  f"objective difference (ours - peer, Rician NLL) {rates[ours][1] - rates[peer][1]:+.5f}")


if __name__ == "__main__":
    main()
