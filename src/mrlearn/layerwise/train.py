"""Fit a layer-wise config through the engine and score its test split (used by the layer-wise study).

``mrlearn train --config layerwise_greedy`` trains the same way: the spine's ``ReconDataModule`` takes the
method's ``build_transform`` (the SENSE input/target of :class:`~mrlearn.layerwise.data.SenseTransform`).
:func:`train` writes the run folder through :class:`~mrlearn.engine.runfolder.RunFolder`, fits with the engine's
trainer (``training.runner.make_trainer``: checkpoints, best checkpoint, NaN guard, logger) and selects the
weights it scores by validation: end-to-end loads ``checkpoints/best.ckpt``; greedy keeps, per block, the
weights of the block's best validation epoch (``GreedyModule``); convex blocks are solved to tolerance (no
selection). ``metrics.json`` adds ``selected``, the engine's convergence record (``steps``, ``best_step``,
``stopped_by``, ``converged``, ...; ``best_step`` is None unless ``best.ckpt`` is what was scored; greedy and convex
runs are judged per block: ``block_plateau`` / ``block_cap`` / ``block_budget`` / ``tolerance`` / ``max_iter``, see
``block_convergence``), the validation
curve, the test-split scores and the convex log.

``resume=True`` continues the run folder from ``checkpoints/last.ckpt`` (Lightning's ``ckpt_path``, the engine's
:func:`~mrlearn.training.runner.resume_checkpoint`): weights, optimizer, loop counters, the greedy stage with its
best-so-far block weights and plateau counters, the solved convex blocks and their log, and the position in the
interrupted epoch (the sampler skips the batches already trained). A convex epoch gathers the block's patches
before it solves it, and its checkpoints fall at epoch ends only (it takes no optimizer step), so an interrupted
convex epoch is gathered again from its start.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import lightning as L

from mrlearn.config import ExperimentConfig, dump_config
from mrlearn.engine.convergence import Convergence, convergence_record, find_callback
from mrlearn.engine.runfolder import RunFolder
from mrlearn.errors import input_error
from mrlearn.io import write_json
from mrlearn.layerwise.module import LayerwiseModule
from mrlearn.engine.checkpoint import load_checkpoint, load_weights
from mrlearn.training.data import ReconDataModule
from mrlearn.training.runner import TrainResult, build_method, make_trainer, resume_checkpoint


def train(cfg: ExperimentConfig, callbacks: Sequence[L.Callback] = (), test: bool = False,
          resume: bool = False) -> TrainResult:
    """Fit ``cfg`` (a ``layerwise_*`` method); ``test=True`` also scores the test split (``metrics.json``);
    ``resume``: continue the run folder from its last checkpoint (module docstring)."""
    run_dir = cfg.run_dir()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_method(cfg, init=not (resume and (run_dir / "checkpoints" / "last.ckpt").is_file()))
    if not isinstance(module, LayerwiseModule):
        raise input_error("method.name", f"{cfg.method.get('name')!r} is not a layer-wise method",
                          "use layerwise_end_to_end, layerwise_greedy or layerwise_convex")
    datamodule = ReconDataModule(cfg, transform_factory=module.build_transform)
    trainer, ckpt_cb = make_trainer(cfg, run_dir, callbacks, monitor=module.checkpoint_monitor,
                                    unused_parameters=getattr(module, "ddp_unused_parameters", False))
    ckpt_path = resume_checkpoint(run_dir, resume, cfg.trainer.max_epochs) if resume else None
    with RunFolder(run_dir, dump_config(cfg), cfg.seed, resume=resume, extra={"name": cfg.name, "resumed": resume},
                   rank=int(trainer.global_rank)) as folder:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*returned `None`.*")
            step = int(load_checkpoint(ckpt_path).get("global_step", 0)) if ckpt_path is not None else 0
            if step:  # a convex run takes no optimizer step: its epochs restart whole, in the trainer's epoch order
                datamodule.resume_at(step)
            trainer.fit(module, datamodule=datamodule, ckpt_path=None if ckpt_path is None else str(ckpt_path),
                        weights_only=True)
            if trainer.interrupted:
                raise KeyboardInterrupt
            conv = find_callback(trainer, Convergence)
            record = convergence_record(trainer, conv, ckpt_cb)
            curve = [{"step": int(st), "epoch": int(ep), conv.monitor: v} for st, ep, v in conv.series] if conv else []
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
            selected = module.selection
            if selected == "best_checkpoint":
                if ckpt_cb.best_path and Path(ckpt_cb.best_path).is_file():
                    load_weights(module, load_checkpoint(ckpt_cb.best_path)["state_dict"], ckpt_cb.best_path)
                else:
                    selected = "last"
            if selected != "best_checkpoint":  # greedy: per-block best epochs; convex: solved blocks; last weights
                record["best_step"] = None
            record.update(module.block_convergence() or {})  # greedy / convex: judged per block
            test_metrics = {}
            if test:
                module.eval()
                trainer.test(module, datamodule=datamodule, verbose=False)
                test_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test_")}
        extra = {"convex_log": getattr(module, "convex_log", [])}
        if folder.writer:
            write_json(run_dir / "metrics.json", {"final": metrics, "test": test_metrics, "volumes": module.volume_results,
                                                  "selected": selected, **record, "validation_curve": curve,
                                                  "history": module.history_list(), **extra})
        folder.finished(global_step=int(trainer.global_step), epochs=int(trainer.current_epoch),
                        stopped_by=record["stopped_by"], converged=record["converged"])
    return TrainResult(run_dir, {**metrics, **test_metrics}, module.volume_results, module.history_list(),
                       run_dir / "checkpoints" / "last.ckpt", Path(ckpt_cb.best_path) if ckpt_cb.best_path else None,
                       module, int(trainer.global_rank), record)


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
