"""``mrlearn train``: fit an experiment config with Lightning and write a run folder."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mrlearn.errors import input_error


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a reconstruction method from a YAML config",
                              description="Train from a YAML experiment config (`mrlearn configs` lists the shipped "
                                          "ones). The run folder gets config.yaml, run.json, metrics.json, "
                                          "checkpoints/ and the logger's folder (tensorboard/ by default). "
                                          "SIGTERM/SIGINT save a resumable checkpoint and exit 143/130; continue with "
                                          "--resume. A failed run's folder can be used again as it is.")
    p.add_argument("--config", help="experiment YAML, or the name of a shipped one (`mrlearn configs` lists them all "
                                    "with a description, e.g. unet_demo, unet_fastmri_knee); with --resume, defaults "
                                    "to the run folder's config.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.chans=16 (repeatable)")
    p.add_argument("--out", help="run folder (default: the config's out_dir or runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from <run>/checkpoints/last.ckpt")
    p.add_argument("--devices", help="number of devices (processes), e.g. 2")
    p.add_argument("--nodes", help="number of machines (trainer.num_nodes), each running --devices processes; under "
                                   "SLURM or torchrun Lightning reads the ranks from the environment")
    p.add_argument("--strategy", help="Lightning strategy, e.g. ddp")
    p.add_argument("--accelerator", help="cpu, gpu or auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mrlearn.config import load_config
    from mrlearn.engine.cluster import requeued
    from mrlearn.training.runner import train

    overrides = list(args.overrides)
    for key, value in (("trainer.devices", args.devices), ("trainer.num_nodes", args.nodes), ("trainer.strategy", args.strategy),
                       ("trainer.accelerator", args.accelerator), ("out_dir", args.out)):
        if value is not None:
            overrides.append(f"{key}={value}")
    config = args.config
    if config is None:
        if not (args.resume and args.out):
            raise input_error("--config", "missing", "give --config FILE (or --resume --out RUN_DIR to continue a run)")
        config = Path(args.out) / "config.yaml"
        if not config.is_file():
            raise input_error(args.out, "no run to resume here (no config.yaml)", "check --out or start the run with --config")
    cfg = load_config(config, overrides)
    resume = args.resume
    if not resume and requeued() and (cfg.run_dir() / "run.json").is_file():
        resume = True  # SLURM started the job again after a pre-emption requeue: continue, never start over
        print(f"mrlearn train: SLURM restarted the job (SLURM_RESTART_COUNT={os.environ.get('SLURM_RESTART_COUNT')}); "
              f"resuming {cfg.run_dir()}", file=sys.stderr)
    result = train(cfg, resume=resume)
    if result.rank != 0:
        return 0
    m = result.metrics
    print(f"mrlearn train: finished {cfg.name} in {result.run_dir}")
    if m:
        print("  validation: " + ", ".join(f"{k[4:]} {m[k]:.4g}" for k in ("val_nmse", "val_psnr", "val_ssim") if k in m))
    c = result.convergence
    if c:
        state = "converged" if c.get("converged") else "NOT converged (still improving when stopped)"
        print(f"  {c.get('steps')} steps, stopped by {c.get('stopped_by') or 'interruption'}, best {c.get('monitor')} at "
              f"step {c.get('best_step')}: {state}")
    print(f"  checkpoints: {result.last_checkpoint}" + (f", best {result.best_checkpoint}" if result.best_checkpoint else ""))
    logs = {"tensorboard": f"TensorBoard: tensorboard --logdir {result.run_dir / 'tensorboard'}",
            "csv": f"CSV log: {result.run_dir / 'csv'}", "mlflow": f"MLflow: {result.run_dir / 'mlruns'}"}
    print(f"  metrics: {result.run_dir / 'metrics.json'}; {logs.get(cfg.trainer.logger, '')}")
    return 0
