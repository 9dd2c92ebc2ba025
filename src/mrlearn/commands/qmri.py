"""``mrlearn qmri fit`` (IVIM maps from a 4-D NIfTI), ``mrlearn qmri train`` (a network for a protocol) and
``mrlearn qmri study`` (the label study, a thin preset over ``mrlearn study``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("qmri", help="quantitative MRI: IVIM maps, networks for a protocol, label study")
    sub = p.add_subparsers(dest="qmri_command", metavar="ACTION")
    s = sub.add_parser("study", help="train networks with GT / MLE / self-supervised / hybrid labels and compare")
    s.add_argument("config", help="study YAML (e.g. configs/ivim_labels.yaml or the shipped name ivim_labels)")
    s.add_argument("--out", help="output folder (default: runs/<name>)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set qmri.n_train=2000")
    s.set_defaults(func=run_study)
    f = sub.add_parser("fit", help="IVIM maps (S0, f, D, Dstar) from a 4-D diffusion NIfTI")
    f.add_argument("--dwi", required=True, help="4-D NIfTI [X, Y, Z, N] (int16 with scale/intercept is fine)")
    f.add_argument("--bvals", required=True, help="text file with N b-values in s/mm^2 (b = 0 not required)")
    f.add_argument("--mask", help="3-D NIfTI mask on the DWI grid (default: Otsu on the lowest-b image, printed)")
    f.add_argument("--method", default="mle", choices=("mle", "nlls", "net"))
    f.add_argument("--model", help="trained network file (.pt from 'mrlearn qmri train') for --method net")
    f.add_argument("--signal-model", default="ivim", choices=("ivim", "ivim_additive"),
                   help="IVIM convention for mle/nlls (ivim: f e^{-bD*}; ivim_additive: f e^{-b(D+D*)})")
    f.add_argument("--bounds", help="fit bounds NAME=LOW:HIGH,... e.g. 'f=0:0.5,Dstar=3:100' (D, D* in um^2/ms; "
                                    "S0 in multiples of the lowest-b signal); default: physics and data, see docs")
    f.add_argument("--bad-voxels", default="skip", choices=("skip", "error"),
                   help="voxels of the mask with NaN, negative or no signal: skip and count them (default) or refuse")
    f.add_argument("--sigma", type=float, help="noise sd in signal units for mle (default: estimated, see docs)")
    f.add_argument("--device", default="cpu", help="torch device for the fit (cpu, cuda)")
    f.add_argument("--out", required=True, help="output folder")
    f.set_defaults(func=run_fit)
    t = sub.add_parser("train", help="train a parameter network for your protocol (simulated signals)")
    t.add_argument("--bvals", required=True, help="text file with the protocol's b-values in s/mm^2")
    t.add_argument("--label", default="mle", choices=("gt", "mle", "ss", "hybrid"),
                   help="training label: groundtruth, Rician MLE fit, self-supervised signal loss, or hybrid")
    t.add_argument("--alpha", type=float, default=0.5, help="hybrid weight of the MLE label (0: GT, 1: MLE)")
    t.add_argument("--snr", default="30", help="SNR at S0 of the simulated signals: a value or LOW:HIGH (uniform)")
    t.add_argument("--signal-model", default="ivim", choices=("ivim", "ivim_additive"))
    t.add_argument("--ranges", metavar="NAME=LOW:HIGH,...",
                   help="training ranges, e.g. 'f=0.05:0.4,D=0.2:2,Dstar=5:100' (D, D* in um^2/ms; default S0 0.8:1.2, "
                        "f 0.1:0.5, D 0.4:3, Dstar 10:150; within the physical limits f 0-1, D 0-5, D* 2-300)")
    t.add_argument("--ranges-from", metavar="FIT_DIR",
                   help="derive the f, D, D* ranges from a 'qmri fit' (mle/nlls) folder of your data: 2nd-98th "
                        "percentile of the in-mask, converged, not-at-bound estimates, widened 10%% each side "
                        "(--ranges overrides single parameters)")
    t.add_argument("--n-train", type=int, default=100000, help="simulated training signals (10%% for validation)")
    t.add_argument("--patience", type=int, default=30, help="epochs without validation improvement before stopping")
    t.add_argument("--max-epochs", type=int, default=1000, help="cap on epochs (the run says if it was hit)")
    t.add_argument("--batch-size", type=int, default=256,
                   help="signals per optimizer step over all devices (the global batch; each of --devices N "
                        "processes takes 1/N of it, so N must divide it; default 256)")
    t.add_argument("--no-init-from-gt", action="store_true",
                   help="for mle/ss/hybrid: do not start from a trained groundtruth-label network (default: do)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu, gpu or auto")
    t.add_argument("--devices", type=int, default=1, help="processes (one per device) for data-parallel training")
    t.add_argument("--strategy", default="auto", help="Lightning strategy with --devices > 1, e.g. ddp")
    t.add_argument("--out", required=True, help="run folder (network.pt, run.json, metrics.json)")
    t.set_defaults(func=run_train)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def check_device(name: str) -> str:
    """``--device`` as a torch device name (:func:`mrlearn.devices.resolve_device`)."""
    from mrlearn.devices import resolve_device

    return resolve_device(name)


def run_fit(args: argparse.Namespace) -> int:
    from mrlearn.qmri.invivo import fit_dwi

    t0 = time.time()
    device = check_device(args.device)
    info = fit_dwi(args.dwi, args.bvals, args.out, method=args.method, mask=args.mask, network=args.model,
                   sigma=args.sigma, model=args.signal_model, device=device, bounds=args.bounds,
                   bad_voxels=args.bad_voxels)
    outside = (info.get("outside_training") or {}).get("voxels")
    note = "" if outside is None else f", {outside} outside the network's training ranges"
    print(f"qmri fit: {info['voxels']} voxels by {args.method}{note} in {time.time() - t0:.1f} s -> {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from mrlearn.qmri.train import train_for_protocol

    from mrlearn.errors import input_error
    from mrlearn.engine.cluster import process_rank

    check_device(args.device)
    if args.devices < 1:
        raise input_error("--devices", f"{args.devices} is below 1", "use 1, or the number of devices to train on")
    from mrlearn.errors import RunInterrupted

    try:
        record = train_for_protocol(args.bvals, args.out, label=args.label, alpha=args.alpha, snr=args.snr,
                                    model=args.signal_model, n_train=args.n_train, patience=args.patience,
                                    max_epochs=args.max_epochs, init_from_gt=not args.no_init_from_gt, seed=args.seed,
                                    batch_size=args.batch_size,
                                    accelerator=args.device, devices=args.devices, strategy=args.strategy,
                                    ranges=args.ranges, ranges_from=args.ranges_from)
    except RunInterrupted as exc:  # the engine's default names `mrlearn train --resume`, which is not this command
        exc.resume = "the same `mrlearn qmri train` command into a new --out (qmri train starts over; it has no --resume)"
        raise
    if process_rank() != 0:  # under DDP every rank runs this command; rank 0 alone reports
        return 0
    print(f"qmri train: {record['label']} network, {record['steps']} steps, best at step {record['best_step']}, "
          f"stopped by {record['stopped_by']} -> {Path(args.out) / 'network.pt'}")
    return 0


def run_study(args: argparse.Namespace) -> int:
    from mrlearn.qmri.runner import study_from_config

    out = study_from_config(args.config, args.overrides, args.out)
    print(f"qmri study: report at {Path(out) / 'report.html'}")
    return 0
