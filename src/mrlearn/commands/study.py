"""``mrlearn study CONFIG [--out DIR] [--set k=v] [--executor sequential|local|ray] [--workers N] [--address A]``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("study", help="run a grid of experiments (arms x settings x seeds) and report",
                              description="Run every run of a study YAML that is not finished yet (each in "
                                          "OUT/runs/<id>/), then write OUT/study.csv and OUT/report.html. "
                                          "Rerunning a killed study continues it (unfinished runs resume from "
                                          "their checkpoints); several processes, on several machines, may share "
                                          "one study folder (each run is leased while it runs). A failed run is "
                                          "reported in one line and the others go on; the exit status is 2 if any "
                                          "failed.")
    p.add_argument("config", help="study YAML, or a shipped study name (e.g. mtl_contrasts, mtl_tiny)")
    p.add_argument("--out", help="study folder (default: runs/<study name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value in every run's config (e.g. data.root=/data/knee), or the study's seeds, "
                        "grid, arms, budget, resources (e.g. seeds=[0,1,2], grid.model.chans=[8,16], arms=[stl,mtl])")
    p.add_argument("--executor", choices=("sequential", "local", "ray"), default="sequential",
                   help="sequential (default), local: N runs at once on this machine, ray: each run a Ray task")
    p.add_argument("--workers", type=int, default=None,
                   help="local: runs at once (default 2); ray: CPUs of the local Ray instance (default: all)")
    p.add_argument("--address", default=None,
                   help="ray: join this cluster (auto, HOST:PORT or ray://HOST:10001) instead of a local instance; "
                        "with token authentication set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN")
    p.add_argument("--summary-only", action="store_true", help="do not train; rewrite study.csv/report.html from finished runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shlex

    from mrlearn.errors import RunInterrupted
    from mrlearn.study import load_study, run_study

    spec = load_study(args.config, args.overrides)
    try:
        out = run_study(spec, args.out, only_summary=args.summary_only, executor=args.executor, workers=args.workers,
                        address=args.address)
    except RunInterrupted as exc:  # the run's own resume command would finish it outside the study
        again = ["mrlearn", "study", args.config, *(["--out", args.out] if args.out else []),
                 *[x for o in args.overrides for x in ("--set", o)],
                 *(["--executor", args.executor] if args.executor != "sequential" else []),
                 *(["--workers", str(args.workers)] if args.workers else []),
                 *(["--address", args.address] if args.address else [])]
        exc.resume = f"{shlex.join(again)} (finished runs are kept; unfinished ones resume from their checkpoints)"
        raise
    if (out / "study.csv").is_file():
        print(f"mrlearn study: {spec.name}: {out / 'study.csv'}, {out / 'report.html'}")
    else:
        print(f"mrlearn study: {spec.name}: no finished run in {out} yet, so no study.csv "
              f"(run `mrlearn study {args.config}` without --summary-only)")
    return 0
