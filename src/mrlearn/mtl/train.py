"""Run one multi-task experiment (Lightning fit + per-task evaluation); the ``mtl`` study runner.

``train_mtl(cfg)`` writes the usual run folder (``training.runner``'s trainer, checkpoints, ``run.json``,
``config.yaml``) plus ``metrics.json`` with the per-task final evaluation. The evaluation runs on
``tasks.eval_split`` (test by default) with the fixed per-file masks: per volume the fastMRI NMSE/PSNR/SSIM
(volume max as data range) and per slice PSNR/SSIM with the same volume max; results are grouped by task.
Every task is evaluated with its best checkpoint by validation (``selected: best``; ``last`` when no
validation ran): multi-task and pooled models select each task on its own validation metric
(``checkpoints/best_<task>.ckpt``; :mod:`mrlearn.mtl.selection`) and train until every task's stopping rule has
fired or a cap is reached; single-task models and transfer phases keep ``best.ckpt``. ``metrics.json`` carries
the engine's convergence record (``steps``, ``best_step``, ``stopped_by``, ``converged``, ...;
:func:`mrlearn.engine.convergence.convergence_record`; multi-task: of the joint mean, recorded only), combined over
the models of a single-task run (``per_task_runs`` keeps each) or the two transfer phases (``phases``), and
``task_selection``: per task its own best step, samples seen at best, stop, ``stopped_by`` and ``converged``
(study.csv shows these per group). ``train_mtl(cfg, resume=True)`` continues every fit from its
``checkpoints/last.ckpt`` (weights, optimizer, loop counters, every task's selection state, the position in the
interrupted epoch), so on CPU the result equals an uninterrupted run's.

Baseline ``tasks.transfer: {pretrain_fraction: f}``: with the same budget ``B`` (optimizer steps the configured
epochs take on the full multi-task loader) the model is trained for ``round(f B)`` steps on all tasks but the
last (phase 1, one model task), then for ``B - round(f B)`` steps on the last task (phase 2, starting from the
phase-1 weights, fresh optimizer). Both phases use ``model.num_tasks: 1``; the run's history counts the
fine-tuning steps after the pretraining steps. With ``phase_caps: each`` (studies
trained to convergence) each phase has the whole ``B`` as its safety cap instead, so neither phase is stopped by
half a budget while still improving.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from mrlearn.config import ExperimentConfig, dump_config
from mrlearn.engine.convergence import Convergence, convergence_record, find_callback
from mrlearn.engine.runfolder import RunFolder
from mrlearn.engine.task_selection import TaskSelection, use_task_selection
from mrlearn.errors import input_error
from mrlearn.io import write_json
from mrlearn.mtl.config import tasks_config
from mrlearn.mtl.data import MultiTaskDataModule, stratified_counts
from mrlearn.mtl.selection import checkpoint_of, group_records, single_record, task_monitors
from mrlearn.registry import register
from mrlearn.study.runner import RunOutcome
from mrlearn.engine.checkpoint import load_checkpoint, load_weights
from mrlearn.engine.cluster import process_rank
from mrlearn.training.runner import build_method, last_validation, make_trainer


@dataclasses.dataclass
class Fit:
    """One fitted model: the module (selected weights loaded), its data module, steps, the selection and the
    engine's convergence record (``steps``, ``best_step``, ``stopped_by``, ``converged``, ...)."""

    module: Any
    dm: MultiTaskDataModule
    steps: int
    best_step: int | None
    selected: str  # "best" (best checkpoint by validation) or "last" (no validation ran)
    record: dict[str, Any] = dataclasses.field(default_factory=dict)
    curve: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    conv: Any = None  # the fit's Convergence (a TaskSelection with per_task)
    run_dir: Path | None = None
    selection: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per task, with per_task
    went_on: bool = True  # it trained in this call (False: resumed a fit that had already stopped)


def _resume_point(run_dir: Path, resume: bool) -> str | None:
    """``<run_dir>/checkpoints/last.ckpt`` (checked) when resuming and it exists, else None (start at step 0)."""
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not (resume and last.is_file()):
        return None
    load_checkpoint(last)  # empty / truncated / foreign files: one line before Lightning sees them
    return str(last)


def _fit(cfg: ExperimentConfig, run_dir: Path, init_state: dict[str, torch.Tensor] | None = None,
         per_task: bool = False, resume: bool = False) -> Fit:
    """Build, (optionally load weights), fit, then load the best checkpoint by validation. ``per_task``: every task
    selected and stopped on its own metric (:class:`TaskSelection`); the module keeps its last weights and
    :func:`evaluate_fit` loads each task's. ``resume``: continue from ``checkpoints/last.ckpt`` where present."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_method(cfg)
    if not hasattr(module, "set_sizes"):
        raise input_error("method.name", f"{cfg.method.get('name')!r} is not the multi-task method", "set method.name: mtl")
    dm = module.make_datamodule(cfg)
    if init_state is not None:
        module.model.load_state_dict(init_state)
    if not module.automatic_optimization and cfg.trainer.gradient_clip_val:
        module.clip_value = float(cfg.trainer.gradient_clip_val)  # Lightning clips only automatic optimisation
        cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, gradient_clip_val=None))
    monitor = getattr(module, "checkpoint_monitor", ("val_ssim", "max"))
    trainer, ckpt = make_trainer(cfg, run_dir, monitor=monitor,
                                 unused_parameters=getattr(module, "ddp_unused_parameters", False))
    if per_task:
        use_task_selection(trainer, task_monitors(ckpt.monitor, list(module.task_names)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        ckpt_path = _resume_point(run_dir, resume)
        start = int(load_checkpoint(ckpt_path).get("global_step", 0)) if ckpt_path is not None else -1
        if ckpt_path is not None:
            dm.resume_at(start)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    if trainer.interrupted:
        raise KeyboardInterrupt
    conv = find_callback(trainer, Convergence)
    record = convergence_record(trainer, conv, ckpt)
    curve = [{"step": int(st), "epoch": int(ep), conv.monitor: v} for st, ep, v in conv.series] if conv else []
    if isinstance(conv, TaskSelection):
        selection = conv.task_records(record["stopped_by"])
        for name, rec in selection.items():
            path = checkpoint_of(run_dir, name) if rec["best_step"] is not None else None
            rec["checkpoint"] = None if path is None else str(path.absolute())
        record["task_selection"] = selection
        selected = "best" if all(r["checkpoint"] for r in selection.values()) else "last"
        return Fit(module, dm, int(trainer.global_step), record["best_step"], selected, record, curve, conv,
                   Path(run_dir), selection, trainer.global_step > start)
    selected = "last"
    if ckpt.best_path and Path(ckpt.best_path).is_file():
        load_weights(module, load_checkpoint(ckpt.best_path)["state_dict"], ckpt.best_path)
        selected = "best"
    else:
        record["best_step"] = None
    return Fit(module, dm, int(trainer.global_step), record["best_step"], selected, record, curve, conv, Path(run_dir),
               went_on=trainer.global_step > start)


def evaluate_fit(fit: Fit, split: str, examples: int = 1) -> RunOutcome:
    """:func:`evaluate` with the weights each task was selected with: a per-task fit scores every task with its
    ``best_<task>.ckpt`` (its last weights where the task has none), any other fit with the weights it holds."""
    if not fit.selection:
        return evaluate(fit.module, fit.dm, split, examples)
    last = copy.deepcopy(fit.module.state_dict())
    parts = []
    for t, name in enumerate(fit.module.task_names):
        path = (fit.selection.get(name) or {}).get("checkpoint")
        state, where = (load_checkpoint(path)["state_dict"], path) if path else (last, "last weights")
        load_weights(fit.module, state, where)
        parts.append(evaluate(fit.module, fit.dm, split, examples, only={t}))
    return _merge(parts)


def combine_records(records: list[dict[str, Any]], steps: int, best: int | None) -> dict[str, Any]:
    """One convergence record for several fits (single-task models, transfer phases): ``steps`` and ``best_step``
    given, ``stopped_by`` the distinct causes joined by ``+``, converged only when every fit converged."""
    causes = sorted({str(r.get("stopped_by")) for r in records if r.get("stopped_by")})
    return {"steps": int(steps), "best_step": best, "stopped_by": "+".join(causes) or None,
            "converged": bool(records) and all(bool(r.get("converged")) for r in records),
            "validations": sum(int(r.get("validations") or 0) for r in records),
            "monitor": records[0].get("monitor") if records else None}


@torch.no_grad()
def evaluate(module: Any, dm: MultiTaskDataModule, split: str, examples: int = 1,
             only: set[int] | None = None) -> RunOutcome:
    """Per-task volume metrics, per-slice rows and example images on ``split`` (see the module docstring);
    ``only``: the task indices to score (all when None)."""
    from mrlearn.evaluation.scoring import NOISELESS, mean_metrics, slice_metrics, volume_metrics

    module.eval()
    loader = dm.eval_loader(split, all_volumes=True)
    names = module.task_names
    vols: dict[str, dict[str, Any]] = {}
    for batch in loader:
        wanted = [only is None or int(t) in only for t in batch["task"]]
        if not any(wanted):
            continue
        out = module.reconstruct(batch).float().cpu().numpy()
        for i, fname in enumerate(batch["fname"]):
            if not bool(batch["has_target"][i]) or not wanted[i]:
                continue
            v = vols.setdefault(fname, {"task": int(batch["task"][i]), "slices": [], "pred": [], "target": [], "input": [],
                                        "clean": []})
            v["slices"].append(int(batch["slice"][i]))
            v["pred"].append(out[i])
            v["target"].append(batch["target"][i, 0].float().numpy())
            v["input"].append(batch["zero_filled"][i, 0].float().numpy())
            clean = batch.get("target_noiseless")  # simulated data: the noiseless reference (NaN where absent)
            v["clean"].append(None if clean is None else clean[i, 0].float().numpy())
    groups: dict[str, list[dict[str, float]]] = {}
    inputs: dict[str, list[dict[str, float]]] = {}  # the zero-filled input, scored the same way
    slices: list[dict[str, Any]] = []
    shown: dict[str, dict[str, np.ndarray]] = {}
    for fname in sorted(vols):
        v = vols[fname]
        name = names[v["task"]]
        order = np.argsort(v["slices"])
        gt = np.stack(v["target"])[order].astype(np.float64)
        pred = np.stack(v["pred"])[order].astype(np.float64)
        zf = np.stack(v["input"])[order].astype(np.float64)
        scored, scored_zf = volume_metrics(gt, pred), volume_metrics(gt, zf)
        cleans = [v["clean"][j] for j in order]
        if all(c is not None and np.isfinite(c).all() for c in cleans):  # second reference: the noiseless image
            ref = np.stack(cleans).astype(np.float64)
            scored.update({f"{k}{NOISELESS}": x for k, x in volume_metrics(ref, pred).items()})
            scored_zf.update({f"{k}{NOISELESS}": x for k, x in volume_metrics(ref, zf).items()})
        groups.setdefault(name, []).append(scored)
        inputs.setdefault(name, []).append(scored_zf)
        for s, row in zip(np.asarray(v["slices"])[order], slice_metrics(gt, pred)):
            slices.append({"group": name, "fname": fname, "slice": int(s), **row})
        if examples and name not in shown:
            mid = len(order) // 2
            shown[name] = {"target": gt[mid], "input": np.stack(v["input"])[order][mid], "output": pred[mid]}
    mean = lambda d: {g: mean_metrics(ms) for g, ms in d.items()}  # noqa: E731
    return RunOutcome(groups=mean(groups), slices=slices, examples=shown, extra={"zero_filled": mean(inputs)})


def _budget(cfg: ExperimentConfig) -> int:
    dm = MultiTaskDataModule(cfg)
    steps = len(dm.make_train_sampler()) * cfg.trainer.max_epochs
    return min(steps, cfg.trainer.max_steps) if cfg.trainer.max_steps > 0 else steps


def _phase_cfg(cfg: ExperimentConfig, task_ids: list[int], steps: int | None, sub: str) -> ExperimentConfig:
    """``cfg`` narrowed to the tasks ``task_ids`` as ONE model task, run in ``<run>/<sub>`` (``steps``: max_steps).

    With stratified batches the narrowed model trains on its tasks' share of the configured batch (``data.batch_size``
    4 at ratio [1, 1]: 2 samples per step), so a task sees as many samples per step in a single-task model or a
    transfer phase as in the multi-task model; validation and test batches keep ``data.batch_size``."""
    tasks = copy.deepcopy(tasks_config(cfg))
    if tasks.strategy == "stratified":
        share = stratified_counts(cfg.data.batch_size, tasks.ratio or [1.0] * len(tasks.specs))
        tasks.phase_counts = [share[i] for i in task_ids]  # read by MultiTaskDataModule.make_train_sampler
        tasks.ratio = [tasks.ratio[i] for i in task_ids] if tasks.ratio else None
    tasks.tasks = [tasks.tasks[i] for i in task_ids]
    tasks.specs = [tasks.specs[i] for i in task_ids]
    tasks.transfer = None
    tasks.separate = False
    tasks.pooled = True
    out = copy.deepcopy(cfg)
    out.extra = {**cfg.extra, "tasks": tasks}
    out.model = {**cfg.model, "num_tasks": 1}
    if steps is not None:
        out.trainer = dataclasses.replace(cfg.trainer, max_steps=max(1, steps), max_epochs=10 ** 6)
    out.out_dir = str(cfg.run_dir() / sub)
    return out


def _merge(outcomes: list[RunOutcome]) -> RunOutcome:
    merged = RunOutcome(groups={})
    for o in outcomes:
        merged.groups.update(o.groups)
        merged.slices.extend(o.slices)
        merged.examples.update(o.examples)
        merged.extra.setdefault("zero_filled", {}).update(o.extra.get("zero_filled", {}))
    return merged


def train_mtl(cfg: ExperimentConfig, resume: bool = False) -> RunOutcome:
    """Fit ``cfg`` (a ``tasks`` config) in ``cfg.run_dir()`` and evaluate every task; writes ``metrics.json``.
    ``resume``: continue an interrupted run in that folder (every fit from its ``checkpoints/last.ckpt``)."""
    tasks = tasks_config(cfg)
    run_dir = cfg.run_dir()
    with RunFolder(run_dir, dump_config(cfg), cfg.seed, resume=resume, extra={"name": cfg.name, "method": "mtl"},
                   rank=process_rank()) as folder:
        outcome, record = _run(cfg, tasks, resume)
        if folder.writer:
            write_json(run_dir / "metrics.json", record)
        folder.finished(global_step=record["steps"], stopped_by=record.get("stopped_by"), converged=record.get("converged"))
    return outcome


def _best_path(fit: Fit) -> str | None:
    path = Path(fit.run_dir or ".") / "checkpoints" / "best.ckpt"
    return str(path.absolute()) if fit.selected == "best" and path.is_file() else None


def _run(cfg: ExperimentConfig, tasks: Any, resume: bool = False) -> tuple[RunOutcome, dict[str, Any]]:
    run_dir = cfg.run_dir()
    if tasks.separate:  # single-task baseline: one model per task, each with the configured budget
        parts, history, steps, sizes, samples, best, records, chosen = [], [], 0, [], {}, {}, [], {}
        for i, spec in enumerate(tasks.specs):
            sub = _phase_cfg(cfg, [i], None, f"task_{spec.name}")
            fit = _fit(sub, sub.run_dir(), resume=resume)
            fit.module.task_names = [spec.name]
            parts.append(evaluate(fit.module, fit.dm, tasks.eval_split, tasks.examples))
            history.extend({"task": spec.name, **h} for h in fit.module.history_list())
            steps += fit.steps
            sizes.extend(fit.dm.sizes())
            samples[spec.name] = fit.module.samples_seen[0]
            best[spec.name] = {**fit.record, "selected": fit.selected, "validation_curve": fit.curve}
            records.append(fit.record)
            chosen[spec.name] = single_record(fit.conv, fit.record, _best_path(fit))
        outcome = _merge(parts)
        combined = combine_records(records, steps, None)
        outcome.extra.update({"steps": steps, "sizes": sizes, "tasks": tasks.names, "samples_per_task": samples,
                              "convergence": group_records(chosen, samples, combined)})
        return outcome, {"eval_split": tasks.eval_split, "tasks": outcome.groups, "history": history,
                         **combined, "per_task_runs": best, "task_selection": chosen, "samples_per_task": samples,
                         "zero_filled": outcome.extra["zero_filled"], "train_sizes": dict(zip(tasks.names, sizes))}
    if tasks.transfer is None:  # multi-task or pooled: each task selected and stopped on its own metric
        fit = _fit(cfg, run_dir, per_task=len(tasks.names) > 1, resume=resume)
        module, dm, steps = fit.module, fit.dm, fit.steps
        samples = fit.module.samples_per_task()
        record = dict(fit.record)
        chosen = fit.selection or {tasks.names[0]: single_record(fit.conv, fit.record, _best_path(fit))}
        history = module.history_list()
        outcome = evaluate_fit(fit, tasks.eval_split, tasks.examples)
    else:
        budget = _budget(cfg)
        first = int(round(tasks.transfer.get("pretrain_fraction", 0.5) * budget))
        first = min(max(first, 1), budget - 1)
        second = budget - first
        if tasks.transfer.get("phase_caps", "split") == "each":
            first = second = budget
        n = len(tasks.specs)
        pre = _fit(_phase_cfg(cfg, list(range(n - 1)), first, "pretrain"), run_dir / "pretrain", resume=resume)
        if resume and pre.went_on:  # pretraining went on (resumed mid-way, or a stopping check's longer window):
            shutil.rmtree(run_dir / "finetune", ignore_errors=True)  # fine-tuning starts again from its new end
        fit = _fit(_phase_cfg(cfg, [n - 1], second, "finetune"), run_dir / "finetune",
                   init_state=pre.module.model.state_dict(), resume=resume and not pre.went_on)
        module, steps = fit.module, pre.steps + fit.steps  # the steps each phase took (early stopping may end it first)
        record = {**combine_records([pre.record, fit.record], steps, None if fit.best_step is None else pre.steps + fit.best_step),
                  "phases": {"pretrain": pre.record, "finetune": fit.record}}
        dm = MultiTaskDataModule(dataclasses.replace(cfg, model={**cfg.model, "num_tasks": 1}))
        module.task_names = tasks.names  # evaluate every task with the fine-tuned (single-task) model
        samples = {**dict(zip(tasks.names[:-1], pre.module.samples_seen)), tasks.names[-1]: fit.module.samples_seen[0]}
        # the fine-tuning phase selects on the last task alone; its steps count after the pretraining steps
        chosen = {tasks.names[-1]: single_record(fit.conv, fit.record, _best_path(fit), offset=pre.steps)}
        history = [{**h, "step": h["step"] + pre.steps} if "step" in h else dict(h) for h in module.history_list()]
        outcome = evaluate(module, dm, tasks.eval_split, tasks.examples)
    record["steps"] = steps
    outcome.extra.update({"steps": steps, "sizes": dm.sizes(), "tasks": tasks.names, "samples_per_task": samples,
                          "best_step": record["best_step"], "selected": fit.selected,
                          "convergence": group_records(chosen, samples, {k: v for k, v in record.items()
                                                                         if k != "task_selection"})})
    return outcome, {"final": last_validation(history), "eval_split": tasks.eval_split, "tasks": outcome.groups,
                     "history": history, **record, "selected": fit.selected, "validation_curve": fit.curve,
                     "task_selection": chosen, "samples_per_task": samples,
                     "zero_filled": outcome.extra["zero_filled"], "train_sizes": dict(zip(tasks.names, dm.sizes()))}


@register("runner", "mtl")
def study_runner(cfg: ExperimentConfig, resume: bool = False) -> RunOutcome:
    """``study.runner`` entry for configs with a ``tasks`` section; ``method: {name: reference, ...}`` arms
    (zero-filled, CS, ...) are scored without training (:func:`score_reference`). ``resume``: continue an
    unfinished run folder from its checkpoints (:func:`train_mtl`)."""
    if cfg.method.get("name") == "reference":
        return score_reference(cfg)
    return train_mtl(cfg, resume=resume)


study_runner.continues_from_stop = True  # type: ignore[attr-defined]  # every fit resumes its at_stop (see _run)


def score_reference(cfg: ExperimentConfig) -> RunOutcome:
    """A classical reference row of a multi-task study (``method: {name: reference, recon: zero-filled}``): every
    task's ``tasks.eval_split`` volumes reconstructed by the reference and scored by :func:`evaluate`, no training."""
    tasks = tasks_config(cfg)
    module = build_method(cfg)
    module.task_names = tasks.names
    outcome = evaluate(module, MultiTaskDataModule(cfg), tasks.eval_split, tasks.examples)
    record = module.solver_record() if hasattr(module, "solver_record") else None
    if record is not None:  # an iterative classical reference: how its solver stopped
        outcome.extra["convergence"] = record
    return outcome
