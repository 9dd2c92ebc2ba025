"""Network output layer and training ranges on a cord-like series: abs vs bounded output, fixed vs fitted ranges.

Usage: python benchmarks/qmri_ranges.py [--voxels 2000] [--snr 30] [--n-train 20000] [--max-epochs 60] [--seed 0]

Data: ``--voxels`` signals of the common IVIM at a spinal-cord-like protocol (11 b-values 5..800 s/mm^2, no b = 0)
with parameters uniform in f 0.02-0.25, D 0.2-0.7, D* 5-60 um^2/ms (S0 1000, Rician noise S0 / ``--snr``), written
as a NIfTI so that ``mrlearn qmri fit`` (MLE, default bounds) fits it and ``--ranges-from`` reads the folder.
Networks (groundtruth labels, same seed, same simulated-signal budget, to a plateau of patience 10 or
``--max-epochs``): ``abs / fixed`` (the previous output layer and the fixed ranges f 0.1-0.5, D 0.4-3, D* 10-150),
``sigmoid / fixed`` and ``sigmoid / fitted`` (ranges from the MLE fit as ``qmri train --ranges-from`` derives them).
Printed per network: median absolute error against the truth per parameter, voxels with an impossible estimate
(f outside [0, 1], D or D* < 0, D > 5), voxels flagged outside the training ranges; and for the MLE fit the share
of its estimates inside the fixed ranges (what the user measured: 10-13 % of the cord).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BV = [5.0, 10.0, 20.0, 30.0, 50.0, 80.0, 100.0, 200.0, 400.0, 600.0, 800.0]
TRUTH = {"f": (0.02, 0.25), "D": (0.2, 0.7), "Dstar": (5.0, 60.0)}
NAMES = ("S0", "f", "D", "Dstar")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", type=int, default=2000)
    ap.add_argument("--snr", type=float, default=30.0)
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--max-epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import nibabel as nib

    from mrlearn.cli import main as cli
    from mrlearn.qmri.netpredict import apply_network
    from mrlearn.qmri.ranges import DEFAULT_RANGES, format_ranges, output_bounds, ranges_from_fit
    from mrlearn.qmri.signal import add_noise, get_model
    from mrlearn.qmri.train import simulate_training_set, train_network

    torch.set_num_threads(1)
    b = torch.tensor(BV, dtype=torch.float64)
    rng = np.random.default_rng(args.seed)
    truth = np.stack([np.full(args.voxels, 1000.0)] + [rng.uniform(*TRUTH[k], args.voxels) for k in NAMES[1:]], -1)
    fn, _ = get_model("ivim")
    sig = add_noise(fn(torch.from_numpy(truth), b) / 1000, args.snr,
                    generator=torch.Generator().manual_seed(args.seed)) * 1000
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        nib.save(nib.Nifti1Image(sig.numpy().reshape(args.voxels, 1, 1, len(BV)).astype(np.float32), np.eye(4)),
                 str(d / "dwi.nii.gz"))
        nib.save(nib.Nifti1Image(np.ones((args.voxels, 1, 1), np.uint8), np.eye(4)), str(d / "mask.nii.gz"))
        (d / "b.txt").write_text(" ".join(map(str, BV)))
        cli(["qmri", "fit", "--dwi", str(d / "dwi.nii.gz"), "--bvals", str(d / "b.txt"), "--mask", str(d / "mask.nii.gz"),
             "--out", str(d / "fit")])
        mle = {k: nib.load(str(d / "fit" / f"{k}.nii.gz")).get_fdata().ravel() for k in NAMES}
        inside = np.ones(args.voxels, bool)
        for k in NAMES[1:]:
            inside &= (mle[k] >= DEFAULT_RANGES[k][0]) & (mle[k] <= DEFAULT_RANGES[k][1])
        print(f"MLE fit: {100 * inside.mean():.1f} % of the voxels inside the fixed ranges {format_ranges(DEFAULT_RANGES)}")
        fitted, _ = ranges_from_fit(d / "fit", "ivim")
        fitted = {"S0": DEFAULT_RANGES["S0"], **fitted}
        print(f"ranges from the fit: {format_ranges(fitted)}")
        ref = sig[:, 0]
        sn = sig / ref[:, None]
        cases = [("abs / fixed", DEFAULT_RANGES, False), ("sigmoid / fixed", DEFAULT_RANGES, True),
                 ("sigmoid / fitted", fitted, True)]
        print(f"{'network':18s} {'|err| f':>8s} {'|err| D':>8s} {'|err| D*':>8s} {'impossible':>10s} "
              f"{'outside':>8s} {'epochs':>6s} {'s':>5s}")
        mle_err = [float(np.median(np.abs(mle[k] - truth[:, i]))) for i, k in enumerate(NAMES) if i]
        print(f"{'MLE fit':18s} {mle_err[0]:8.4f} {mle_err[1]:8.4f} {mle_err[2]:8.2f}")
        for name, ranges, bounded in cases:
            t0 = time.time()
            data = simulate_training_set(b, "ivim", args.n_train, (args.snr, args.snr), args.seed, ranges)
            scales = torch.tensor([ranges[k][1] for k in NAMES], dtype=torch.float64)
            scales[0] = data["theta"][:, 0].max().item()
            bounds = output_bounds("ivim", b, ranges, s0_label_max=scales[0].item()) if bounded else None
            net, rec = train_network(data["signals"], data["theta"] / scales, data["theta"] / scales, b, scales, "ivim",
                                     "gt", run_dir=d / name.replace(" / ", "_"), seed=args.seed, patience=10,
                                     max_epochs=args.max_epochs, batch_size=256, out_bounds=bounds)
            with torch.no_grad():
                raw = net(sn.float()).double() * scales  # before any clamping at prediction time
            impossible = ((raw[:, 1] < 0) | (raw[:, 1] > 1) | (raw[:, 2] < 0) | (raw[:, 2] > 5) | (raw[:, 3] < 0)).sum()
            meta = {"names": NAMES, "scales": scales.tolist(), "model": "ivim", "bvals": BV,
                    "output": "sigmoid" if bounded else "abs", "output_bounds": None if bounds is None else list(bounds),
                    "ranges": ranges}
            est = apply_network(net, meta, sn)
            err = [float(np.median(np.abs(est.params[:, i].numpy() - truth[:, i]))) for i in (1, 2, 3)]
            print(f"{name:18s} {err[0]:8.4f} {err[1]:8.4f} {err[2]:8.2f} {int(impossible):10d} "
                  f"{est.info['outside_training']['voxels']:8d} {rec['epochs']:6d} {time.time() - t0:5.0f}")


if __name__ == "__main__":
    main()
