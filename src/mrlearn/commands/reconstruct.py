"""``mrlearn reconstruct``: write fastMRI submission files (``reconstruction`` ``[S, h, w]``) for a data folder.

Learned (``--checkpoint``; the run's ``config.yaml`` gives model and method) or classical (``--method``, options
by ``--set key=value``, e.g. ``--set lam=0.01 --set calib_size=20``; the classical path never imports Lightning).
Files that carry a ``mask`` (1-D or 2-D) are reconstructed from their own samples; fully sampled files are
undersampled retrospectively with a mask fixed per file name (``--mask-type/--acceleration/--center-fraction``,
defaulting to the training config's mask, or random 4x with centre fraction 0.08).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from mrlearn.errors import input_error
from mrlearn.io import FolderLock, guard_outputs, refuse_overwriting_data


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("reconstruct", help="reconstruct a folder of volumes into fastMRI submission files",
                              description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a trained checkpoint (runs/<name>/checkpoints/best.ckpt)")
    src.add_argument("--method", help="a classical method: zero-filled, sense, cg-sense, cs-l1 or tv (maps by ESPIRiT when the files carry none)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="a classical method option, e.g. --set lam=0.01, max_iter, calib_size, kernel_size, crop, "
                        "threshold, lambda_convention (repeatable; a wrong key lists the valid ones)")
    p.add_argument("--config", help="training config (default: the run folder's config.yaml)")
    p.add_argument("--data", required=True, help="folder of fastMRI-format .h5 volumes (or one file)")
    p.add_argument("--out", required=True, help="output folder for the submission files")
    p.add_argument("--mask-type", choices=("random", "equispaced", "equispaced_fraction", "poisson"),
                   help="retrospective mask for fully sampled files")
    p.add_argument("--acceleration", type=float, help="acceleration R of the retrospective mask, e.g. 4")
    p.add_argument("--center-fraction", type=float, help="fully sampled centre fraction, e.g. 0.08")
    p.add_argument("--batch-size", type=int, default=1, help="slices per batch (default 1)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.set_defaults(func=run)


def mask_section(args: argparse.Namespace, default: dict | None) -> dict:
    """The mask config section from the command-line options (falling back to ``default``)."""
    given = args.mask_type is not None or args.acceleration is not None or args.center_fraction is not None
    if not given and default is not None:
        return default
    kind = args.mask_type or (default or {}).get("name", "random")
    accel = args.acceleration if args.acceleration is not None else 4.0
    if accel < 1:
        raise input_error("--acceleration", f"{accel} is below 1", "give an undersampling factor >= 1, e.g. 4")
    if kind == "poisson":
        if args.center_fraction is not None:
            raise input_error("--center-fraction", "does not apply to poisson masks", "drop it (poisson uses a 16 x 16 calibration box)")
        return {"name": "poisson", "accelerations": [accel]}
    cf = args.center_fraction if args.center_fraction is not None else (0.08 if accel <= 4 else 0.04)
    if not 0 < cf < 1:
        raise input_error("--center-fraction", f"{cf} is not in (0, 1)", "e.g. 0.08 for 4x, 0.04 for 8x")
    return {"name": kind, "accelerations": [accel], "center_fractions": [cf]}


def method_options(method: str, overrides: list[str]) -> dict:
    """``--set key=value`` pairs as method options, checked against the method (one-line error listing valid keys)."""
    from mrlearn.config import set_override
    from mrlearn.recon.driver import split_options

    raw: dict = {}
    for item in overrides:
        set_override(raw, item)
    if any(isinstance(v, dict) for v in raw.values()):
        raise input_error("--set", "method options have no dotted keys", "write --set lam=0.01")
    split_options(method, raw, "--set")
    return raw


def _device(name: str) -> str:
    from mrlearn.devices import resolve_device

    return resolve_device(name)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings of the classical path (e.g. the ESPIRiT support fallback) as one line, without source code."""
    print(f"mrlearn reconstruct: warning: {message}", file=sys.stderr, flush=True)


def write_checked(path: Path, pred, method: str, todo: str, zero_filled=None, segmentation=None) -> None:
    """Write one submission file after :func:`mrlearn.data.checks.check_reconstruction` (NaN/Inf or an absurd
    norm against the zero-filled volume: one line, nothing written for it); never over a raw data file.
    ``segmentation``: labels ``[S, h, w]`` of a joint model, stored as the uint8 dataset ``segmentation``."""
    from mrlearn.data.checks import check_reconstruction
    from mrlearn.data.fastmri import write_reconstruction

    check_reconstruction(path, pred, method, todo, zero_filled)
    refuse_overwriting_data(path)
    write_reconstruction(path, pred, attrs={"method": method}, segmentation=segmentation)


def run_classical(args: argparse.Namespace) -> int:
    """``--method``: mrlearn.recon over the folder (no Lightning).

    Unless the user set ``OMP_WAIT_POLICY``, OpenMP threads sleep instead of spinning between parallel regions
    (``PASSIVE``): the solvers run thousands of short parallel operations, and spinning threads on a machine
    whose cores are busy made a 230 x 180 8-coil CS-L1 take 7 s instead of 1 s with 2 threads. It must be set
    before torch is first imported (here: the classical path imports torch only below).
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from mrlearn import registry
    from mrlearn.recon.folder import iterate_folder

    options = method_options(args.method, args.options)
    if args.batch_size < 1:
        raise input_error("--batch-size", f"{args.batch_size} is below 1", "use 1 or more")
    options.setdefault("batch_size", args.batch_size)
    options.setdefault("device", _device(args.device))
    mask_func = registry.build("mask", mask_section(args, None), "mask options")
    out = guard_outputs(args.out, [args.data])
    t0 = time.perf_counter()
    count = slices = 0
    with FolderLock(out, what="reconstruction"), warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        for fname, pred, _target in iterate_folder(args.data, args.method, options, mask_func):
            write_checked(out / fname, pred, args.method, "check the method options (e.g. lam) and the input file")
            count += 1
            slices += pred.shape[0]
    print(f"mrlearn reconstruct: {count} volumes ({slices} slices) in {time.perf_counter() - t0:.1f} s -> {out}/ "
          f"(fastMRI submission format, dataset 'reconstruction')")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.method:
        return run_classical(args)
    if args.options:
        raise input_error("--set", "applies to classical methods (--method)", "drop it, or set a learned model's "
                          "options in its training config")
    from mrlearn.config import load_config
    from mrlearn.training.inference import (SegmentationKeeper, eval_dataset, eval_mask_func, iterate_volumes,
                                            module_predictor)
    from mrlearn.engine.checkpoint import load_checkpoint, plugins_needed
    from mrlearn.training.runner import config_for_checkpoint, load_module, quiet_lightning

    quiet_lightning()
    if args.batch_size < 1:
        raise input_error("--batch-size", f"{args.batch_size} is below 1", "use 1 or more")
    device = _device(args.device)
    out = guard_outputs(args.out, [args.data])
    t0 = time.perf_counter()
    with plugins_needed(load_checkpoint(args.checkpoint), args.checkpoint):
        cfg = load_config(args.config) if args.config else config_for_checkpoint(args.checkpoint)
        module = load_module(args.checkpoint, cfg)
    # a joint reconstruction-segmentation method also writes its labels (dataset 'segmentation')
    segs = SegmentationKeeper(module, device) if hasattr(module, "reconstruct_and_segment") else None
    predict = segs if segs is not None else module_predictor(module, device)
    mask = mask_section(args, cfg.mask)
    recon_size = tuple(cfg.data.recon_size) if cfg.data.recon_size else None
    keep_kspace, label = module.keep_kspace, Path(args.checkpoint).name
    mask_func = eval_mask_func(mask)
    dataset = eval_dataset(args.data, mask_func, recon_size, keep_kspace)
    count = slices = 0
    with FolderLock(out, what="reconstruction"):
        for fname, pred, _target, zf in iterate_volumes(dataset, predict, args.batch_size, label=f"reconstruct ({label})"):
            write_checked(out / fname, pred, label, f"the weights of {args.checkpoint} are not usable; use another "
                          "checkpoint (e.g. best.ckpt) or train again", zero_filled=zf,
                          segmentation=None if segs is None else segs.take(fname))
            count += 1
            slices += pred.shape[0]
    dt = time.perf_counter() - t0
    print(f"mrlearn reconstruct: {count} volumes ({slices} slices) in {dt:.1f} s -> {out}/ "
          f"(fastMRI submission format, dataset 'reconstruction'{' and segmentation' if segs else ''})")
    return 0
