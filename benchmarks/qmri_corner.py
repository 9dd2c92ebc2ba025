"""IVIM least squares on the corner series (spinal-cord protocol, no b = 0): convergence and residuals against dipy's
IvimModel trr and scipy's least_squares, voxel by voxel, at one thread.

Usage: python benchmarks/qmri_corner.py [--voxels 200] [--seeds 0 1 2 3] [--threads 1] [--no-dipy]

Data: :func:`mrlearn.qmri.phantom.corner_series` (b = 50..1000 s/mm^2, small f, high D, Rician noise, normalised
by the b = 50 signal): mono-exponential-looking decays whose fits reach the f = 0 / f = 1 corners, and a ridge
S0 -> large, f -> 1 where the fast compartment is seen at b = 50 only. Rows per seed: mrlearn NLLS (converged
fraction, voxels on the S0 bound, largest S0), mrlearn MLE with the true sigma (converged fraction), and the share
of voxels where our residual is <= the reference's:

- dipy trr with our bounds (S0 too: the same problem), over the voxels dipy converged in (no warning);
- dipy trr with its default S0 (no upper bound), over its converged voxels whose end point lies within our bounds,
  and the number that end outside them (a larger S0 than ours allows);
- scipy ``least_squares`` (trf, x_scale "jac") from 4 starts within our bounds, over our converged voxels.

"<=" allows the fit's own stopping tolerance, ftol (1 + |F|) with ftol = 1e-9 on F = 0.5 SSE (dipy stops at
ftol = gtol = xtol = 1e-15, so two fits at one minimum differ by our tolerance at most). Speed: voxels per second
of process CPU time, ours (NLLS, bound check included) against dipy trr in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys


def _threads() -> int:
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
    return 1


for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = str(_threads())

import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
import torch  # noqa: E402

from mrlearn.qmri.fit import fit_voxels  # noqa: E402
from mrlearn.qmri.phantom import CORD_BVALS, corner_series  # noqa: E402
from mrlearn.qmri.signal import get_model  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmri_fit import dipy_trr, not_above  # noqa: E402

SCIPY_STARTS = [(1.0, 0.95, 5.0, 3.0), (1.0, 0.05, 2.0, 15.0), (1.0, 0.2, 1.0, 40.0), (1.0, 0.5, 0.5, 5.0)]


def scipy_lsq(sig: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Lowest 0.5 SSE of scipy least_squares (trf) from ``SCIPY_STARTS`` within the bounds (common IVIM)."""
    beta = b * 1e-3

    def resid(p):
        return p[0] * (p[1] * np.exp(-beta * p[3]) + (1 - p[1]) * np.exp(-beta * p[2])) - sig

    return min(0.5 * float(np.sum(scipy.optimize.least_squares(resid, np.clip(x0, lo, hi), bounds=(lo, hi),
                                                                 method="trf", x_scale="jac").fun ** 2))
               for x0 in SCIPY_STARTS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-dipy", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fn, _ = get_model("ivim")
    b = torch.tensor(CORD_BVALS, dtype=torch.float64)
    tot = {k: [0, 0] for k in ("conv", "mle", "dipy", "dipy_inf", "scipy")}
    outside = 0
    t_ours = t_dipy = 0.0
    print(f"corner series: {args.voxels} voxels x seeds {args.seeds}, b = {list(CORD_BVALS)} s/mm^2, "
          f"threads {torch.get_num_threads()}")
    for seed in args.seeds:
        sig, sigma = corner_series(n=args.voxels, seed=seed)
        t0 = time.process_time()
        res = fit_voxels(sig, b, "ivim", "nlls")
        t_ours += time.process_time() - t0
        mle = fit_voxels(sig, b, "ivim", "mle", sigma=sigma)
        lo, hi = (np.asarray(x) for x in res.bounds)
        ours, conv = res.objective.numpy(), res.converged.numpy()
        line = (f"seed {seed}: nlls converged {conv.sum()}/{conv.size}, on the S0 bound "
                f"{int(res.at_upper[:, 0].sum())}, largest S0 {float(res.params[:, 0].max()):.4g} (bound {hi[0]:.4g}); "
                f"mle converged {int(mle.converged.sum())}/{conv.size}; bound check {res.restarted} re-started, "
                f"{res.improved} improved")
        tot["conv"][0] += int(conv.sum())
        tot["conv"][1] += conv.size
        tot["mle"][0] += int(mle.converged.sum())
        tot["mle"][1] += conv.size
        ref = np.array([scipy_lsq(sig[i].numpy(), b.numpy(), lo, hi) for i in range(sig.shape[0])])
        ok = not_above(ours, ref)
        tot["scipy"][0] += int(ok[conv].sum())
        tot["scipy"][1] += int(conv.sum())
        line += f"\n   <= scipy least_squares in {ok[conv].sum()}/{conv.sum()} of our converged voxels"
        if not args.no_dipy:
            bounds = list(zip(lo, hi))
            for key, s0_max in (("dipy", hi[0]), ("dipy_inf", np.inf)):
                got = dipy_trr(sig.numpy(), b.numpy(), bounds, s0_max=s0_max)
                if isinstance(got, str):
                    line += f"\n   dipy not run: {got}"
                    args.no_dipy = True
                    break
                pd, dconv, secs = got
                dsse = 0.5 * ((fn(torch.from_numpy(pd), b) - sig) ** 2).sum(-1).numpy()
                okd = not_above(ours, dsse)
                within = np.all((pd >= lo - 1e-12) & (pd <= hi * (1 + 1e-12)), -1)
                sel = dconv & within
                tot[key][0] += int(okd[sel].sum())
                tot[key][1] += int(sel.sum())
                if key == "dipy":
                    t_dipy += secs
                    line += f"\n   <= dipy trr (same bounds) in {okd[sel].sum()}/{sel.sum()} dipy-converged voxels"
                else:
                    outside += int((dconv & ~within).sum())
                    line += (f"\n   <= dipy trr (S0 unbounded) in {okd[sel].sum()}/{sel.sum()} dipy-converged voxels "
                             f"within our bounds; {int((dconv & ~within).sum())} dipy-converged voxels end outside "
                             f"(largest S0 {pd[:, 0].max():.4g})")
        print(line)

    def pct(k: str) -> str:
        a, n = tot[k]
        return f"{a}/{n} ({100 * a / max(n, 1):.2f} %)"

    print(f"total: nlls converged {pct('conv')}, mle converged {pct('mle')}; SSE <= scipy in {pct('scipy')}")
    if not args.no_dipy and t_dipy > 0:
        n = args.voxels * len(args.seeds)
        print(f"total: SSE <= dipy trr (same bounds) in {pct('dipy')} of dipy-converged voxels; <= dipy trr "
              f"(S0 unbounded) in {pct('dipy_inf')} of those within our bounds, {outside} outside")
        print(f"speed (CPU time, nlls with bound check): mrlearn {n / t_ours:.0f} voxels/s, dipy trr "
              f"{n / t_dipy:.0f} voxels/s, {t_dipy / t_ours:.1f}x")


if __name__ == "__main__":
    main()
