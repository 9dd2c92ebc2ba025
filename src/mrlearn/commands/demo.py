"""``mrlearn demo``: a thin preset over ``mrlearn study demo`` (embedded data, classical baselines vs U-Net vs
unrolled network) that also writes the demo's ``report.html`` and ``metrics.csv``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="end-to-end demo: embedded data, classical baselines vs U-Net vs unrolled, HTML report",
                              description="Builds (or reuses) the embedded dataset, runs the demo study (configs/demo.yaml: "
                                          "the same runs as 'mrlearn study demo'; finished runs are reused), then "
                                          "writes report.html and metrics.csv.")
    p.add_argument("--out", default=None, help="output folder (default runs/demo; runs/demo_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="a smoke test: tiny phantom data and networks (about 40 s on 2 idle cores)")
    p.add_argument("--config", default="demo", help="demo study file (default: the shipped demo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of every run, or the study's arms/seeds (as for mrlearn study)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mrlearn.training.demo import print_summary, run_demo
    from mrlearn.training.runner import quiet_lightning

    quiet_lightning()
    print_summary(run_demo(args.out, quick=args.quick, config=args.config, overrides=args.overrides))
    return 0
