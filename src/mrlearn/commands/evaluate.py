"""``mrlearn evaluate``: fastMRI NMSE / PSNR / SSIM of reconstructions against targets, per volume and contrast."""

from __future__ import annotations

import argparse
import sys

_HELP = """Score submission-format reconstructions (dataset 'reconstruction' [slices, h, w]) against fastMRI targets
('reconstruction_rss' or 'reconstruction_esc') paired by file name. Metrics as fastMRI: NMSE and PSNR per volume
(peak = target volume max), SSIM per slice (7x7 uniform window, data range = target volume max) averaged over slices;
means and std over volumes, overall and per contrast ('acquisition'). Crops as fastMRI's evaluate.py: a target
taller than wide is centre-cropped to (w, w) (--no-square-crop keeps it whole), and a prediction larger than its
target is centre-cropped to it. A target without a prediction is listed and not scored; a prediction without a
target is an error unless --skip-missing (then listed and not scored). Prints a table and writes metrics.csv and
metrics.json."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="NMSE/PSNR/SSIM of reconstructions vs targets", description=_HELP)
    p.add_argument("--target", required=True, metavar="DIR", help="folder of fastMRI .h5 files with targets")
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of submission .h5 files (same file names)")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write metrics.csv/metrics.json (default: --pred)")
    p.add_argument("--contrast", nargs="+", default=None, metavar="ACQ",
                   help="score only targets with these acquisition names (e.g. CORPD_FBK)")
    p.add_argument("--no-square-crop", dest="square", action="store_false",
                   help="score non-square targets whole instead of fastMRI's (w, w) centre crop")
    p.add_argument("--skip-missing", action="store_true",
                   help="score the predictions that have a target and list those that have none (default: refuse)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mrlearn.evaluation.evaluate import evaluate_folders, format_table

    result = evaluate_folders(args.target, args.pred, args.out, args.contrast, args.square, args.skip_missing)
    print(format_table(result["rows"], result["summary"]))
    if result.get("segmentation"):  # predictions and targets with labels: Dice and HD95 per class
        from mrlearn.evaluation.seg_scoring import format_table as seg_table

        print(seg_table(result["segmentation"]["summary"]))
    if result["skipped"]:
        names = ", ".join(result["skipped"][:5]) + (" ..." if len(result["skipped"]) > 5 else "")
        print(f"mrlearn evaluate: skipped {len(result['skipped'])} prediction(s) without a target (--skip-missing): "
              f"{names}", file=sys.stderr)
    if result["missing"]:
        names = ", ".join(result["missing"][:5]) + (" ..." if len(result["missing"]) > 5 else "")
        print(f"mrlearn evaluate: warning: {len(result['missing'])} target(s) without a prediction, not scored: {names}",
              file=sys.stderr)
    print(f"mrlearn evaluate: wrote {result['csv']} and {result['json']}")
    return 0
