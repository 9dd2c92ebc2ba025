"""Training of the qMRI parameter networks on the engine's Trainer, to a plateau, and ``mrlearn qmri train``.

:func:`train_network` trains one :class:`~mrlearn.qmri.module.QmriNetModule` with the Trainer of
:func:`mrlearn.training.runner.make_trainer` (its checkpoint callback, logger and
:class:`~mrlearn.engine.convergence.Convergence`) in a run folder: validation every epoch, early stopping on
``val_loss`` after ``patience`` epochs without an improvement by more than the fraction ``min_delta`` of the best
(optionally halving the learning rate after each ``lr_patience`` of them), optional caps ``max_epochs`` and ``max_steps``; the
weights returned are those of the best validation epoch, never the last. Its record is the engine's
:func:`~mrlearn.engine.convergence.convergence_record` (``steps``, ``epochs``, ``validations``, ``best_step``,
``best_score``, ``stopped_by`` = ``early_stopping`` / ``max_steps`` / ``max_epochs``, ``converged`` = False when a
cap stopped the run while the validation loss had improved within the last ``patience`` epochs, ``monitor``,
``mode``, ``patience``) plus ``best_epoch``, ``best_val_loss`` (= ``best_score``), ``init_from_gt`` and
``world_size``. ``init_state`` starts from given weights (e.g. the trained groundtruth network).

``resume=True`` continues the run folder from its last checkpoint (the engine's
:func:`~mrlearn.training.runner.resume_checkpoint`, Lightning's ``ckpt_path``): weights, optimizer, loop counters,
early-stopping and stability state, the best weights so far, and the position in the interrupted epoch (the sampler
skips the batches already trained); a network whose fit had ended trains no further step.

Several processes (``devices: 2, strategy: ddp``; gloo on CPU): the training signals are sharded so that the global
batches equal one process's with ``devices x batch_size`` (:mod:`mrlearn.qmri.sharding`), ``val_loss`` is summed
over processes (every rank sees the same value, so early stopping stops every rank at the same epoch), and only
rank 0 writes files.

:func:`train_for_protocol` is ``mrlearn qmri train``: simulated signals for the user's b-values (parameters uniform
in the training ranges -- Epstein's by default, ``--ranges`` / ``--ranges-from`` a fit, see :mod:`.ranges` -- Rician
noise at the given SNR, or SNR uniform in a range), normalised by their mean at the lowest b-value as ``qmri fit``
normalises data, labels as asked, then ``network.pt`` in a run folder. Its networks have the bounded ``sigmoid``
output (:class:`~mrlearn.qmri.networks.IvimMLP`) into :func:`~mrlearn.qmri.ranges.output_bounds`; the ranges and
bounds are in the run's ``config.yaml``, ``metrics.json`` and the network file.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from mrlearn.errors import input_error
from mrlearn.qmri.ranges import DEFAULT_RANGES as EPSTEIN_RANGES


def _trainer_config(name: str, seed: int, optim: dict[str, Any], max_epochs: int, max_steps: int, accelerator: str,
                    patience: int, devices: int | str = 1, strategy: str = "auto", min_delta: float = 0.0,
                    lr_patience: int | None = None, stop_on: str = "val_loss"):
    from mrlearn.config import EarlyStoppingConfig, ExperimentConfig, TrainerConfig
    from mrlearn.qmri.stability import MONITOR

    if stop_on == "stability":  # an "improvement" is a move of the estimates (mrlearn.qmri.stability); the
        stop = EarlyStoppingConfig(monitor=MONITOR, mode="max", patience=int(patience), min_delta=0.0,  # rate
                                   relative=False)  # decays on the loss plateau (QmriNetModule.lr_plateau)
    else:
        stop = EarlyStoppingConfig(monitor="val_loss", mode="min", patience=int(patience), min_delta=float(min_delta),
                                   relative=True, lr_patience=lr_patience)
    trainer = TrainerConfig(max_epochs=max_epochs, max_steps=max_steps, accelerator=accelerator, devices=devices,
                            strategy=strategy, precision="32-true", deterministic=True, progress_bar=False,
                            log_every_n_steps=50, early_stopping=stop)
    return ExperimentConfig(name=name, seed=seed, optim=dict(optim), trainer=trainer)


def _signal_data(tensors: list[torch.Tensor], perm: torch.Tensor, n_val: int, batch_size: int, seed: int,
                 resume_step: int = 0):
    """A data module whose loaders shard the training / validation rows by the Trainer's rank at fit time
    (whole batches gathered by one indexing; see :mod:`mrlearn.qmri.sharding`); ``resume_step``: the optimizer steps
    a resumed fit already took (its first training pass skips them)."""
    import lightning as L

    from mrlearn.qmri.sharding import SignalBatches

    train = TensorDataset(*[t[perm[n_val:]] for t in tensors])
    val = TensorDataset(*[t[perm[:n_val]] for t in tensors])

    class SignalData(L.LightningDataModule):
        def _rank(self) -> tuple[int, int]:
            rank, world = int(self.trainer.global_rank), int(self.trainer.world_size)
            if len(val) < world:
                raise input_error("val_fraction", f"{len(val)} validation signals cannot be shared by {world} "
                                  "processes", "simulate more signals or raise the validation fraction")
            return rank, world

        def train_dataloader(self) -> DataLoader:
            batches = SignalBatches(len(train), batch_size, seed, True, *self._rank())
            if resume_step:
                batches.resume_at(resume_step)
            return DataLoader(train, sampler=batches, batch_size=None)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(val, sampler=SignalBatches(len(val), 4096, seed, False, *self._rank(), pad=False),
                              batch_size=None)

    return SignalData()


def train_network(signals: torch.Tensor, gt_scaled: torch.Tensor, mle_scaled: torch.Tensor, bvals: torch.Tensor,
                  scales: torch.Tensor, model: str, label: str, run_dir: str | Path, alpha: float = 0.5,
                  width: int | None = None, n_hidden: int = 3, optim: dict[str, Any] | None = None, seed: int = 0,
                  max_epochs: int = 1000, max_steps: int = -1, batch_size: int = 256, val_fraction: float = 0.1,
                  patience: int = 20, accelerator: str = "cpu", init_state: dict[str, torch.Tensor] | None = None,
                  log=None, devices: int | str = 1, strategy: str = "auto", min_delta: float = 0.0,
                  lr_patience: int | None = None, out_bounds: tuple[Any, Any] | None = None,
                  stop_on: str = "val_loss", stability_tol: float = 0.005, widths: Any = None,
                  resume: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one network (deterministic for ``seed``); returns (net, record).

    ``out_bounds``: (lower, upper) per parameter in physical units for the bounded output; None: ``abs`` output.

    ``stop_on``: ``val_loss`` (a plateau of the validation loss; the net returned is the best validation epoch's)
    or ``stability`` (:mod:`mrlearn.qmri.stability`: the estimates of the validation signals stayed within
    ``stability_tol`` x ``widths`` (RMS, per parameter; ``widths [P]`` the training-range widths in physical units)
    of their anchor for ``patience`` epochs; the net returned is the last one, whose estimates are the settled ones;
    ``record["stability"]`` holds the tolerance, the moves and the last change).

    ``batch_size`` is per process: ``devices: 2, strategy: ddp`` with ``batch_size`` trains on the same global
    batches as one process with ``2 x batch_size`` (see :mod:`mrlearn.qmri.sharding`). Every rank returns the same
    network and record; files (checkpoints, logs) are written by rank 0. ``resume``: continue ``run_dir`` from its
    last checkpoint where it holds one (module docstring)."""
    import lightning as L

    from mrlearn.engine.convergence import Convergence, convergence_record, find_callback, improved
    from mrlearn.engine.checkpoint import load_checkpoint
    from mrlearn.qmri.module import QmriNetModule
    from mrlearn.training.phases import holds_run
    from mrlearn.training.runner import make_trainer, resume_checkpoint

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed", "lightning.pytorch.strategies.ddp",
                 "lightning.fabric.utilities.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no per-network banners
    warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")  # val_loss: reduced
    L.seed_everything(seed, workers=True, verbose=False)
    n = signals.shape[0]
    n_val = max(1, int(round(n * val_fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    tensors = [t.float() for t in (signals, gt_scaled, mle_scaled)]
    stability, lr_plateau = None, None
    if stop_on == "stability":
        from mrlearn.engine.plateau import Plateau
        from mrlearn.qmri.stability import EstimateStability

        if widths is None:
            raise ValueError("stop_on='stability' needs the parameter widths")
        stability = EstimateStability(torch.as_tensor(widths, dtype=torch.float64), float(stability_tol))
        if lr_patience is not None:  # halve the rate after each lr_patience epochs of a val_loss plateau
            lr_plateau = Plateau("min", None, None, float(min_delta), True, lr_patience=int(lr_patience),
                                 max_lr_cuts=max(1, (int(patience) - 1) // int(lr_patience)))
    elif stop_on != "val_loss":
        raise ValueError(f"stop_on must be 'val_loss' or 'stability', got {stop_on!r}")
    module = QmriNetModule(bvals, scales, model, label, alpha, width, n_hidden, optim, out_bounds=out_bounds,
                           stability=stability, stability_signals=None if stability is None else tensors[0][perm[:n_val]],
                           lr_plateau=lr_plateau)
    if init_state is not None:
        module.net.load_state_dict(init_state)
    best: dict[str, Any] = {"loss": None, "state": None, "epoch": -1}

    class _KeepBest(L.Callback):
        """Weights of the best validation (strictly lower ``val_loss``, as the engine's Convergence counts); they
        travel in checkpoints, so a resumed fit returns the same network."""

        def state_dict(self) -> dict[str, Any]:
            return dict(best)

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            best.update(state_dict)

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking or trainer.state.fn != "fit" or "val_loss" not in trainer.callback_metrics:
                return
            loss = float(trainer.callback_metrics["val_loss"])
            best["last"] = loss
            if improved(loss, best["loss"], "min"):
                best.update(loss=loss, epoch=trainer.current_epoch,
                            state={k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})
            if log is not None and trainer.is_global_zero and trainer.current_epoch % 10 == 0:
                log(f"  epoch {trainer.current_epoch:4d} step {trainer.global_step:7d} val_loss {loss:.4g} "
                    f"(best {best['loss'] if best['loss'] is not None else math.nan:.4g} at epoch {best['epoch']})")

    cfg = _trainer_config(Path(run_dir).name, seed, optim or {"name": "adam", "lr": 1e-3}, max_epochs, max_steps,
                          accelerator, patience, devices, strategy, min_delta, lr_patience, stop_on)
    trainer, ckpt = make_trainer(cfg, Path(run_dir), callbacks=[_KeepBest()], monitor=("val_loss", "min"))
    ckpt_path = resume_checkpoint(Path(run_dir), True, max_epochs) if resume and holds_run(run_dir) else None
    step = int(load_checkpoint(ckpt_path).get("global_step", 0)) if ckpt_path is not None else 0
    trainer.fit(module, datamodule=_signal_data(tensors, perm, n_val, batch_size, seed, step),
                ckpt_path=None if ckpt_path is None else str(ckpt_path), weights_only=True)
    if best["state"] is not None and stability is None:
        module.net.load_state_dict(best["state"])
    module.net.eval()
    conv = find_callback(trainer, Convergence)
    record = convergence_record(trainer, conv, ckpt)
    if stability is None:
        entry = conv.best_entry() if conv is not None else None
        record.update(best_epoch=int(entry[1]) if entry else -1, best_val_loss=entry[2] if entry else math.inf,
                      selected="best")
    else:  # the last weights are returned: their estimates are the settled ones
        last = stability.history[-1] if stability.history else {}
        record.update(best_step=record["steps"], best_epoch=int(trainer.current_epoch) - 1, selected="last",
                      best_val_loss=best["loss"] if best["loss"] is not None else math.inf,
                      final_val_loss=best.get("last", math.inf),
                      lr_reductions=0 if lr_plateau is None else lr_plateau.cuts,
                      stability={"tol": float(stability_tol), "moves": stability.moves,
                                 "last_change": last.get("change"), "last_change_per_parameter": last.get("per_parameter"),
                                 "validations": len(stability.history),
                                 "changes": [None if not math.isfinite(h["change"]) else round(h["change"], 6)
                                             for h in stability.history]})
    record.update(init_from_gt=init_state is not None, world_size=int(trainer.world_size), stop_on=stop_on)
    if record["best_step"] is None:
        record["best_step"] = 0
    return module.net, record


def simulate_training_set(bvals: torch.Tensor, model: str, n: int, snr: tuple[float, float], seed: int,
                          ranges: dict[str, list[float]] | None = None) -> dict[str, torch.Tensor]:
    """Parameters, noisy signals (Rician, sigma = 1 / SNR at S0 ~ 1) and per-signal sigma, all normalised by the
    mean signal at the lowest b-value (S0 and sigma divided by it); float64."""
    from mrlearn.qmri.signal import get_model, sample_uniform

    fn, spec = get_model(model)
    gen = torch.Generator().manual_seed(seed)
    theta = sample_uniform(ranges or EPSTEIN_RANGES, spec.names, n, gen)
    snrs = snr[0] + (snr[1] - snr[0]) * torch.rand(n, generator=gen, dtype=torch.float64)
    sigma = 1.0 / snrs
    clean = fn(theta, bvals)
    noisy = torch.sqrt((clean + torch.randn(clean.shape, generator=gen, dtype=torch.float64) * sigma[:, None]) ** 2
                       + (torch.randn(clean.shape, generator=gen, dtype=torch.float64) * sigma[:, None]) ** 2)
    ref = noisy[:, bvals == bvals.min()].mean(-1).clamp_min(1e-6)
    theta = theta.clone()
    theta[:, 0] = theta[:, 0] / ref
    return {"theta": theta, "signals": noisy / ref[:, None], "sigma": sigma / ref}


def parse_snr(text: str) -> tuple[float, float]:
    """``"30"`` -> (30, 30); ``"10:50"`` -> (10, 50); positive values only."""
    try:
        parts = [float(x) for x in str(text).split(":")]
    except ValueError:
        raise input_error("--snr", f"cannot read {text!r}", "give a number (30) or a range (10:50)") from None
    lo, hi = (parts[0], parts[-1]) if len(parts) in (1, 2) else (0.0, 0.0)
    if not (lo > 0 and hi >= lo):
        raise input_error("--snr", f"need a positive SNR or LOW:HIGH with LOW <= HIGH, got {text!r}", "e.g. 30 or 10:50")
    return lo, hi


def train_for_protocol(bvals_file: str | Path, out: str | Path, label: str = "mle", alpha: float = 0.5,
                       snr: str = "30", model: str = "ivim", n_train: int = 100000, patience: int = 30,
                       max_epochs: int = 1000, init_from_gt: bool = True, seed: int = 0, accelerator: str = "cpu",
                       batch_size: int = 256, optim: dict[str, Any] | None = None, log=print,
                       devices: int | str = 1, strategy: str = "auto", ranges: str | dict | None = None,
                       ranges_from: str | Path | None = None) -> dict[str, Any]:
    """``mrlearn qmri train``: a network for the protocol in ``bvals_file`` written to ``out/network.pt``.

    ``ranges``: ``"f=0.05:0.4,D=0.2:2"`` (or a dict) over the defaults; ``ranges_from``: a ``qmri fit`` folder whose
    estimates give the f, D, D* ranges (:func:`~mrlearn.qmri.ranges.ranges_from_fit`; ``ranges`` still overrides).
    ``batch_size`` is the GLOBAL batch (signals per optimizer step): with ``devices`` N each process takes
    ``batch_size / N`` (:func:`per_device_batch`), so ``--devices`` changes the speed, not the training.
    Under DDP every rank runs this function (Lightning re-runs the script); rank 0 alone writes and logs."""
    from mrlearn.engine.runfolder import RunFolder
    from mrlearn.io import write_json
    from mrlearn.qmri.fit import fit_voxels
    from mrlearn.qmri.netio import save_network
    from mrlearn.qmri.ranges import format_ranges, output_bounds, ranges_from_fit, resolve_ranges
    from mrlearn.engine.cluster import process_rank
    from mrlearn.qmri.signal import get_model, load_protocol
    from mrlearn.qmri.voxels import check_bvalue_units

    if label not in ("gt", "mle", "ss", "hybrid"):
        raise input_error("--label", f"unknown label {label!r}", "use gt, mle, ss or hybrid")
    if not 0 <= alpha <= 1:
        raise input_error("--alpha", f"must be in [0, 1], got {alpha}", "e.g. 0.5")
    for key, value in (("--n-train", n_train), ("--patience", patience), ("--max-epochs", max_epochs)):
        if value < (10 if key == "--n-train" else 1):
            raise input_error(key, f"too small ({value})", "give a larger value")
    snr_range = parse_snr(snr)
    local_batch = per_device_batch(batch_size, devices)
    b = load_protocol(bvals_file)
    check_bvalue_units(b, str(bvals_file))
    _, spec = get_model(model, "--signal-model")
    derived, derivation = (None, None) if ranges_from is None else ranges_from_fit(ranges_from, model)
    train_ranges = resolve_ranges(model, ranges, derived)
    out = Path(out)
    config_text = (f"# mrlearn qmri train\nbvals: {b.tolist()}\nlabel: {label}\nalpha: {alpha}\nsnr: '{snr}'\n"
                   f"model: {model}\nn_train: {n_train}\npatience: {patience}\nmax_epochs: {max_epochs}\n"
                   f"init_from_gt: {init_from_gt}\nseed: {seed}\nbatch_size: {batch_size}\ndevices: {devices}\n"
                   f"strategy: {strategy}\nranges: {{{', '.join(f'{k}: {v}' for k, v in train_ranges.items())}}}\n"
                   f"ranges_from: {json.dumps(None if ranges_from is None else str(ranges_from))}\n")
    rank = process_rank()
    if rank != 0:
        log = _silent
    if derivation is not None:
        log(f"qmri train: ranges from {ranges_from}: " + "; ".join(
            f"{k} {d['voxels']} voxels, p{derivation['percentiles'][0]:g}-p{derivation['percentiles'][1]:g} "
            f"{d['percentiles'][0]:.4g}-{d['percentiles'][1]:.4g}" for k, d in derivation["parameters"].items()))
    log(f"qmri train: training ranges {format_ranges(train_ranges)} (D, D* in um^2/ms)")
    with RunFolder(out, config_text, seed, extra={"kind": "qmri_train"}, rank=rank) as run:
        data = simulate_training_set(b, model, n_train, snr_range, seed, train_ranges)
        scales = torch.tensor([train_ranges[k][1] for k in spec.names], dtype=torch.float64)
        scales[0] = data["theta"][:, 0].max().item()
        bounds = output_bounds(model, b, train_ranges, s0_label_max=scales[0].item())
        mle = data["theta"]
        if label in ("mle", "hybrid"):
            log(f"qmri train: Rician MLE labels for {n_train} simulated signals ...")
            mle = fit_voxels(data["signals"], b, model, "mle", sigma=data["sigma"]).params
        common = dict(bvals=b, scales=scales, model=model, optim=optim or {"name": "adam", "lr": 1e-3}, seed=seed,
                      max_epochs=max_epochs, batch_size=local_batch, patience=patience, accelerator=accelerator, log=log,
                      devices=devices, strategy=strategy, out_bounds=bounds)
        init, records = None, {}
        if init_from_gt and label != "gt":
            log("qmri train: groundtruth-label network first (the start of the others)")
            net_gt, records["gt_init"] = train_network(data["signals"], data["theta"] / scales, mle / scales,
                                                       label="gt", run_dir=out / "gt_init", **common)
            init = net_gt.state_dict()
        log(f"qmri train: {label}-label network")
        net, rec = train_network(data["signals"], data["theta"] / scales, mle / scales, label=label, alpha=alpha,
                                 run_dir=out / "net", init_state=init, **common)
        records[label] = rec
        record = {**rec, "label": label, "alpha": alpha if label == "hybrid" else None, "snr": list(snr_range),
                  "batch_size": batch_size, "batch_size_per_device": local_batch,
                  "n_train": n_train, "model": model, "ranges": train_ranges, "ranges_from": derivation,
                  "output_bounds": {k: [lo, hi] for k, lo, hi in zip(spec.names, *bounds)}, "runs": records}
        if run.writer:
            save_network(out / "network.pt", net, b, scales, model, int(b.numel()), 3, spec.names,
                         info={"label": label, "normalised": "lowest_b", "training": record},
                         output_bounds=bounds, ranges=train_ranges)
            write_json(out / "metrics.json", record)
        run.finished(steps=rec["steps"], best_step=rec["best_step"], stopped_by=rec["stopped_by"])
        if not rec["converged"]:
            log(f"qmri train: NOT converged: stopped by {rec['stopped_by']} while the validation loss was still "
                f"improving (best at epoch {rec['best_epoch']}); raise --max-epochs")
    return record


def per_device_batch(batch_size: int, devices: int | str) -> int:
    """The batch of each of ``devices`` processes for the global ``batch_size``; one-line errors when it does not
    divide (a global batch the processes cannot share equally would not be the one-process batch)."""
    count = int(devices) if isinstance(devices, int) or str(devices).strip().isdigit() else None
    if count is None or count < 1:
        raise input_error("--devices", f"{devices!r} is not a number of processes", "give a count, e.g. --devices 2")
    if batch_size < 1:
        raise input_error("--batch-size", f"must be >= 1, got {batch_size}", "e.g. --batch-size 256")
    if batch_size % count:
        lower = max(count, batch_size - batch_size % count)
        raise input_error("--batch-size", f"{batch_size} signals cannot be shared equally by {count} devices (it is "
                          "the global batch)", f"use a multiple of {count}, e.g. --batch-size {lower}")
    return batch_size // count


def _silent(*_args: Any, **_kwargs: Any) -> None:
    """The log of ranks other than 0."""
