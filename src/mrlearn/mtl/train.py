"""Run one multi-task experiment (Lightning fit + per-task evaluation); the ``mtl`` study runner.

``train_mtl(cfg)`` writes the usual run folder (``training.runner``'s trainer, checkpoints, ``run.json``,
``config.yaml``) plus ``metrics.json`` with the per-task final evaluation. The evaluation runs on
``tasks.eval_split`` (test by default) with the fixed per-file masks: per volume the fastMRI NMSE/PSNR/SSIM
(volume max as data range) and per slice PSNR/SSIM with the same volume max; results are grouped by task.

Baseline ``tasks.transfer: {pretrain_fraction: f}``: with the same budget ``B`` (optimizer steps the configured
epochs take on the full multi-task loader) the model is trained for ``round(f B)`` steps on all tasks but the
last (phase 1, one model task), then for ``B - round(f B)`` steps on the last task (phase 2, starting from the
phase-1 weights, fresh optimizer). Both phases use ``model.num_tasks: 1``.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from mrlearn.config import ExperimentConfig, dump_config
from mrlearn.errors import input_error
from mrlearn.mtl.config import tasks_config
from mrlearn.mtl.data import MultiTaskDataModule
from mrlearn.study.runner import RunOutcome
from mrlearn.training.runfiles import RunInfo, atomic_write_text, write_json
from mrlearn.training.runner import build_method, last_validation, make_trainer, quiet_lightning


def _fit(cfg: ExperimentConfig, run_dir: Path, init_state: dict[str, torch.Tensor] | None = None):
    """Build, (optionally load weights), fit; returns (module, datamodule, trainer)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_method(cfg)
    if not hasattr(module, "set_sizes"):
        raise input_error("method.name", f"{cfg.method.get('name')!r} is not the multi-task method", "set method.name: mtl")
    dm = module.make_datamodule(cfg)
    if init_state is not None:
        module.model.load_state_dict(init_state)
    trainer, _ = make_trainer(cfg, run_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, datamodule=dm)
    if trainer.interrupted:
        raise KeyboardInterrupt
    return module, dm, trainer


@torch.no_grad()
def evaluate(module: Any, dm: MultiTaskDataModule, split: str, examples: int = 1) -> RunOutcome:
    """Per-task volume metrics, per-slice rows and example images on ``split`` (see the module docstring)."""
    from mrlearn.evaluation import metrics as M

    module.eval()
    loader = dm.eval_loader(split)
    names = module.task_names
    vols: dict[str, dict[str, Any]] = {}
    for batch in loader:
        out = module.reconstruct(batch).float().cpu().numpy()
        for i, fname in enumerate(batch["fname"]):
            if not bool(batch["has_target"][i]):
                continue
            v = vols.setdefault(fname, {"task": int(batch["task"][i]), "slices": [], "pred": [], "target": [], "input": []})
            v["slices"].append(int(batch["slice"][i]))
            v["pred"].append(out[i])
            v["target"].append(batch["target"][i, 0].float().numpy())
            v["input"].append(batch["zero_filled"][i, 0].float().numpy())
    groups: dict[str, list[dict[str, float]]] = {}
    slices: list[dict[str, Any]] = []
    shown: dict[str, dict[str, np.ndarray]] = {}
    for fname in sorted(vols):
        v = vols[fname]
        name = names[v["task"]]
        order = np.argsort(v["slices"])
        gt = np.stack(v["target"])[order].astype(np.float64)
        pred = np.stack(v["pred"])[order].astype(np.float64)
        vmax = float(gt.max())
        groups.setdefault(name, []).append({"psnr": M.psnr(gt, pred), "ssim": M.ssim(gt, pred), "nmse": M.nmse(gt, pred)})
        ssims = M.slice_ssim(gt, pred, vmax)
        for j, s in enumerate(np.asarray(v["slices"])[order]):
            slices.append({"group": name, "fname": fname, "slice": int(s), "psnr": M.psnr(gt[j], pred[j], vmax),
                           "ssim": float(ssims[j]), "nmse": M.nmse(gt[j], pred[j])})
        if examples and name not in shown:
            mid = len(order) // 2
            shown[name] = {"target": gt[mid], "input": np.stack(v["input"])[order][mid], "output": pred[mid]}
    summary = {g: {k: float(np.mean([m[k] for m in ms])) for k in ("psnr", "ssim", "nmse")} | {"volumes": len(ms)}
               for g, ms in groups.items()}
    return RunOutcome(groups=summary, slices=slices, examples=shown)


def _budget(cfg: ExperimentConfig) -> int:
    dm = MultiTaskDataModule(cfg)
    steps = len(dm.make_train_sampler()) * cfg.trainer.max_epochs
    return min(steps, cfg.trainer.max_steps) if cfg.trainer.max_steps > 0 else steps


def _phase_cfg(cfg: ExperimentConfig, task_ids: list[int], steps: int | None, sub: str) -> ExperimentConfig:
    """``cfg`` narrowed to the tasks ``task_ids`` as ONE model task, run in ``<run>/<sub>`` (``steps``: max_steps)."""
    tasks = copy.deepcopy(tasks_config(cfg))
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
    return merged


def train_mtl(cfg: ExperimentConfig) -> RunOutcome:
    """Fit ``cfg`` (a ``tasks`` config) in ``cfg.run_dir()`` and evaluate every task; writes ``metrics.json``."""
    quiet_lightning()
    tasks = tasks_config(cfg)
    run_dir = cfg.run_dir()
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise input_error(run_dir, "already holds a run (checkpoints/last.ckpt)", "choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    info = RunInfo(run_dir, cfg.seed, {"name": cfg.name, "method": "mtl"})
    info.running()
    try:
        if tasks.separate:  # single-task baseline: one model per task, each with the configured budget
            parts, history, steps, sizes = [], [], 0, []
            for i, spec in enumerate(tasks.specs):
                sub = _phase_cfg(cfg, [i], None, f"task_{spec.name}")
                module, dm, trainer = _fit(sub, sub.run_dir())
                module.task_names = [spec.name]
                parts.append(evaluate(module, dm, tasks.eval_split, tasks.examples))
                history.extend({"task": spec.name, **h} for h in module.history_list())
                steps += int(trainer.global_step)
                sizes.extend(dm.sizes())
            outcome = _merge(parts)
            outcome.extra = {"steps": steps, "sizes": sizes, "tasks": tasks.names}
            write_json(run_dir / "metrics.json", {"eval_split": tasks.eval_split, "tasks": outcome.groups,
                                                  "history": history, "steps": steps,
                                                  "train_sizes": dict(zip(tasks.names, sizes))})
            info.finished(global_step=steps)
            return outcome
        if tasks.transfer is None:
            module, dm, trainer = _fit(cfg, run_dir)
            history = module.history_list()
            steps = int(trainer.global_step)
        else:
            budget = _budget(cfg)
            first = int(round(tasks.transfer.get("pretrain_fraction", 0.5) * budget))
            first = min(max(first, 1), budget - 1)
            n = len(tasks.specs)
            pre, _, _ = _fit(_phase_cfg(cfg, list(range(n - 1)), first, "pretrain"), run_dir / "pretrain")
            fine_cfg = _phase_cfg(cfg, [n - 1], budget - first, "finetune")
            module, _, trainer = _fit(fine_cfg, run_dir / "finetune", init_state=pre.model.state_dict())
            dm = MultiTaskDataModule(dataclasses.replace(cfg, model={**cfg.model, "num_tasks": 1}))
            module.task_names = tasks.names  # evaluate every task with the fine-tuned (single-task) model
            history = module.history_list()
            steps = first + int(trainer.global_step)
        outcome = evaluate(module, dm, tasks.eval_split, tasks.examples)
        outcome.extra = {"steps": steps, "sizes": dm.sizes(), "tasks": tasks.names}
        write_json(run_dir / "metrics.json", {"final": last_validation(history), "eval_split": tasks.eval_split,
                                              "tasks": outcome.groups, "history": history, "steps": steps,
                                              "train_sizes": dict(zip(tasks.names, dm.sizes()))})
        info.finished(global_step=steps)
    except BaseException as exc:
        info.failed(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
        raise
    return outcome


def study_runner(cfg: ExperimentConfig) -> RunOutcome:
    """``study.runner`` entry for configs with a ``tasks`` section."""
    return train_mtl(cfg)
