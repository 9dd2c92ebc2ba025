"""Fit a layer-wise config and score its test split (used by the layer-wise study).

``mrlearn train --config layerwise_greedy`` trains the same way: the spine's ``ReconDataModule`` takes the
method's ``build_transform`` (the SENSE input/target of :class:`~mrlearn.layerwise.data.SenseTransform`).
:func:`train` here adds the test-split scores and the convex log to ``metrics.json``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import lightning as L

from mrlearn.config import ExperimentConfig, dump_config
from mrlearn.errors import input_error
from mrlearn.layerwise.module import LayerwiseModule
from mrlearn.training.data import ReconDataModule
from mrlearn.training.runfiles import RunInfo, atomic_write_text, write_json
from mrlearn.training.runner import TrainResult, build_method, make_trainer


def train(cfg: ExperimentConfig, callbacks: Sequence[L.Callback] = (), test: bool = False) -> TrainResult:
    """Fit ``cfg`` (a ``layerwise_*`` method); ``test=True`` also scores the test split (``metrics.json``)."""
    run_dir = cfg.run_dir()
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise input_error(run_dir, "already holds a run (checkpoints/last.ckpt)", "choose another out_dir")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_method(cfg)
    if not isinstance(module, LayerwiseModule):
        raise input_error("method.name", f"{cfg.method.get('name')!r} is not a layer-wise method",
                          "use layerwise_end_to_end, layerwise_greedy or layerwise_convex")
    datamodule = ReconDataModule(cfg, transform_factory=module.build_transform)
    trainer, ckpt_cb = make_trainer(cfg, run_dir, callbacks)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    info = RunInfo(run_dir, cfg.seed, {"name": cfg.name, "resumed": False})
    info.running()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*returned `None`.*")
            trainer.fit(module, datamodule=datamodule, weights_only=True)
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
            test_metrics = {}
            if test:
                module.eval()
                trainer.test(module, datamodule=datamodule, verbose=False)
                test_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test_")}
    except BaseException as exc:
        info.failed(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
        raise
    extra = {"convex_log": getattr(module, "convex_log", [])}
    write_json(run_dir / "metrics.json", {"final": metrics, "test": test_metrics, "volumes": module.volume_results,
                                          "history": module.history_list(), **extra})
    info.finished(global_step=int(trainer.global_step), epochs=int(trainer.current_epoch))
    return TrainResult(run_dir, {**metrics, **test_metrics}, module.volume_results, module.history_list(),
                       run_dir / "checkpoints" / "last.ckpt", Path(ckpt_cb.best_path) if ckpt_cb.best_path else None, module)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mrlearn.layerwise.train --config layerwise_greedy [--set key=value ...] [--test]``."""
    import argparse
    import sys

    from mrlearn.config import load_config
    from mrlearn.errors import MrlearnError

    parser = argparse.ArgumentParser(prog="python -m mrlearn.layerwise.train", description=main.__doc__)
    parser.add_argument("--config", required=True, help="YAML file or shipped config name (layerwise_*)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<name>)")
    parser.add_argument("--test", action="store_true", help="also score the test split")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.out:
            cfg.out_dir = args.out
        result = train(cfg, test=args.test)
    except MrlearnError as exc:
        print(f"mrlearn: error: {exc}", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
