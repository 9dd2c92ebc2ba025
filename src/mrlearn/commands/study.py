"""``mrlearn study CONFIG [--out DIR] [--set k=v]``: run a study grid (resumable) and write study.csv + report.html."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("study", help="run a grid of experiments (arms x settings x seeds) and report",
                              description="Run every run of a study YAML that is not finished yet (each in "
                                          "OUT/runs/<id>/), then write OUT/study.csv and OUT/report.html. "
                                          "Rerunning a killed study continues it.")
    p.add_argument("config", help="study YAML, or a shipped study name (mtl_contrasts, mtl_tiny, mtl_knee_fastmri)")
    p.add_argument("--out", help="study folder (default: runs/<study name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value in every run's experiment config, e.g. --set data.root=/data/knee")
    p.add_argument("--summary-only", action="store_true", help="do not train; rewrite study.csv/report.html from finished runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mrlearn.study import load_study, run_study

    spec = load_study(args.config, args.overrides)
    out = run_study(spec, args.out, only_summary=args.summary_only)
    print(f"mrlearn study: {spec.name}: {out / 'study.csv'}, {out / 'report.html'}")
    return 0
