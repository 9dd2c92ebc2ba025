"""``mrlearn demo``: build the embedded dataset, train a U-Net at 4x, compare with zero-filled, write a report."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="end-to-end demo: embedded data, classical baselines vs U-Net vs unrolled, HTML report",
                              description="Builds (or reuses) the embedded dataset, trains the methods of the demo "
                                          "config, evaluates them on the test volumes and writes report.html and "
                                          "metrics.csv.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="tiny phantom data and network (seconds; a smoke test)")
    p.add_argument("--config", default="demo", help="demo config (default: the shipped demo.yaml)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mrlearn.training.demo import load_demo_config, run_demo
    from mrlearn.training.runner import quiet_lightning

    quiet_lightning()
    cfg = load_demo_config(args.config, quick=args.quick)
    summary = run_demo(cfg, Path(args.out))
    print(f"mrlearn demo: finished in {summary['seconds']:.0f} s")
    for label, m in summary["means"].items():
        print(f"  {label:<14} NMSE {m['nmse']:.4f}  PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}")
    print(f"  report:  {summary['report']}")
    print(f"  metrics: {summary['metrics_csv']}")
    for label, run_dir in summary["runs"].items():
        print(f"  {label} run: {run_dir}")
    return 0
