"""``mrlearn qmri study CONFIG`` (the label study) and ``mrlearn qmri fit`` (IVIM maps from a 4-D NIfTI)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("qmri", help="quantitative MRI: IVIM label study and voxel-wise fits")
    sub = p.add_subparsers(dest="qmri_command", metavar="ACTION")
    s = sub.add_parser("study", help="train networks with GT / MLE / self-supervised / hybrid labels and compare")
    s.add_argument("config", help="study YAML (e.g. configs/ivim_labels.yaml or the shipped name ivim_labels)")
    s.add_argument("--out", help="output folder (default: the config's out_dir or runs/<name>)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set qmri.n_train=2000")
    s.set_defaults(func=run_study)
    f = sub.add_parser("fit", help="IVIM maps (S0, f, D, Dstar) from a 4-D diffusion NIfTI")
    f.add_argument("--dwi", required=True, help="4-D NIfTI [X, Y, Z, N]")
    f.add_argument("--bvals", required=True, help="text file with N b-values (s/mm^2)")
    f.add_argument("--mask", help="3-D NIfTI mask on the DWI grid (default: voxels with any positive signal)")
    f.add_argument("--method", default="mle", choices=("mle", "nlls", "net"))
    f.add_argument("--model", help="trained network file (.pt from 'mrlearn qmri study', models/) for --method net")
    f.add_argument("--signal-model", default="ivim", choices=("ivim", "ivim_additive"),
                   help="IVIM convention for mle/nlls (ivim: f e^{-bD*}; ivim_additive: f e^{-b(D+D*)})")
    f.add_argument("--sigma", type=float, help="noise sd in signal units for mle (default: estimated, see docs)")
    f.add_argument("--device", default="cpu", help="torch device for the fit (cpu, cuda)")
    f.add_argument("--out", required=True, help="output folder")
    f.set_defaults(func=run_fit)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def run_fit(args: argparse.Namespace) -> int:
    from mrlearn.qmri.invivo import fit_dwi

    t0 = time.time()
    info = fit_dwi(args.dwi, args.bvals, args.out, method=args.method, mask=args.mask, network=args.model,
                   sigma=args.sigma, model=args.signal_model, device=args.device)
    print(f"qmri fit: {info['voxels']} voxels by {args.method} in {time.time() - t0:.1f} s -> {args.out}")
    return 0


def run_study(args: argparse.Namespace) -> int:
    from mrlearn.qmri.runner import study_from_config

    out = study_from_config(args.config, args.overrides, args.out)
    print(f"qmri study: report at {Path(out) / 'report.html'}")
    return 0
