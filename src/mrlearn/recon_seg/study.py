"""Study runner ``recon_seg`` (registry kind ``runner``): train one arm of a joint reconstruction + segmentation study
and score it on the ``test`` split.

The arm's pipeline is the config's ``recon_seg_run.pipeline`` (:mod:`mrlearn.recon_seg.run_config`); each task is
selected on its own validation metric (reconstruction: ``val_psnr``, segmentation: ``val_dice``) and stopped by
its own plateau rule (``trainer.early_stopping`` for the reconstruction, ``recon_seg_run.seg_early_stopping`` for the
segmentation). Run folder (``cfg.run_dir()``):

* ``joint``: one fit in the run folder with the engine's per-task selection
  (:class:`~mrlearn.recon_seg.selection.JointSelection`: ``checkpoints/best_recon.ckpt``,
  ``checkpoints/best_seg.ckpt``); the image metrics come from the first, the labels from the second;
* ``two_step``: ``recon/`` (stage ``recon``, best by ``val_psnr``), then ``seg/`` (stage ``seg`` from ``recon/``'s
  best checkpoint, reconstruction frozen, best by ``val_dice``); both scores from ``seg/``'s best weights (their
  reconstruction network is ``recon/``'s best, unchanged);
* ``zero_filled`` / ``target``: ``seg/`` only (stage ``seg``; the segmenter sees the zero-filled magnitude or the
  target image in training, selection and test). The zero-filled arm reports the zero-filled image's metrics
  beside its Dice; the target arm reports Dice only.

``selection.json`` in the run folder holds each task's convergence record and checkpoint; the study row's record
merges them (converged only if every task converged; ``steps``: the optimizer steps of all its fits).

``resume=True`` (an interrupted study run, :mod:`mrlearn.study.resume`) continues the run from its checkpoints with
the exact state (weights, optimizer, loop counters, each task's selection and stopping state): ``joint`` its one fit;
the staged pipelines (held by a run folder of their own, :mod:`mrlearn.training.phases`) read back a finished
``recon/`` or ``seg/`` fit and resume the one in progress.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from mrlearn.config import ExperimentConfig, config_from_dict, config_to_dict
from mrlearn.errors import input_error
from mrlearn.io import write_json
from mrlearn.recon_seg.run_config import WHERE, ReconSegRunConfig, task_stopping
from mrlearn.registry import register
from mrlearn.study.results import RunOutcome, merge_records

#: pipelines that train a segmenter only, on a fixed (parameter-free) image
SEG_ONLY = ("zero_filled", "target")


def run_section(cfg: ExperimentConfig) -> ReconSegRunConfig:
    """The config's ``recon_seg_run`` section (defaults when absent)."""
    section = (getattr(cfg, "extra", {}) or {}).get(WHERE)
    return section if isinstance(section, ReconSegRunConfig) else ReconSegRunConfig()


def check_arm(cfg: ExperimentConfig, pipeline: str) -> None:
    """One-line errors for a model that cannot run ``pipeline``."""
    model = cfg.model if isinstance(cfg.model, dict) else {}
    name = model.get("name")
    if pipeline != "joint" and name != "recon_then_seg":
        raise input_error("model.name", f"{name!r}: pipeline {pipeline} trains a recon_then_seg model",
                          "set model.name: recon_then_seg, or recon_seg_run.pipeline: joint")
    recon = (model.get("recon") or {}).get("name") if isinstance(model.get("recon"), dict) else None
    if pipeline in SEG_ONLY and recon != "zero_filled":
        raise input_error("model.recon", f"pipeline {pipeline} segments a fixed image, but the model's recon is "
                          f"{recon!r}", "set model.recon: {name: zero_filled}")
    if pipeline == "two_step" and recon == "zero_filled":
        raise input_error("model.recon", "pipeline two_step trains the reconstruction network, and zero_filled has none",
                          "name a reconstruction network (e.g. unrolled), or use pipeline: zero_filled")


def stage_config(cfg: ExperimentConfig, sub: str | None, method: dict[str, Any], stopping: Any,
                 init: Path | None = None) -> ExperimentConfig:
    """``cfg`` as a plain ``recon_seg`` experiment for one fit in ``<run>/<sub>`` (None: the run folder itself):
    ``method`` keys set, ``trainer.early_stopping`` = ``stopping`` (None: record only), ``model.init`` = ``init``."""
    raw = config_to_dict(cfg)
    raw.pop(WHERE, None)
    raw["method"] = {**raw["method"], **method}
    raw["trainer"]["early_stopping"] = dataclasses.asdict(stopping) if stopping is not None else None
    if init is not None:
        raw["model"] = {**raw["model"], "init": str(init)}
    if sub is not None:
        raw["out_dir"] = str(cfg.run_dir() / sub)
        raw["name"] = f"{cfg.name}/{sub}"
    return config_from_dict(raw, where=f"{cfg.name}: {sub or 'joint'} stage")


class _OnDevice:
    """Calls a module's method with the batch's tensors moved to the module's device."""

    def __init__(self, module: Any, method: str):
        self.module, self.method = module.eval(), method
        self.device = next((p.device for p in module.parameters()), torch.device("cpu"))

    def __call__(self, batch: Any) -> torch.Tensor:
        moved = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return getattr(self.module, self.method)(moved)


def _module_with(cfg: ExperimentConfig, checkpoint: Path) -> Any:
    from mrlearn.training.runner import load_module

    return load_module(checkpoint, cfg)


def _class_names(cfg: ExperimentConfig, dm: Any) -> dict[int, str]:
    from mrlearn.data.fastmri import read_segmentation_labels

    volumes = getattr(dm.dataset("test").slices, "volumes", [])
    return read_segmentation_labels(volumes[0].path) if volumes else {}


def _fit_joint(cfg: ExperimentConfig, section: ReconSegRunConfig,
               resume: bool = False) -> tuple[Any, Any, dict[str, dict[str, Any]], Any]:
    from mrlearn.recon_seg.selection import JointSelection
    from mrlearn.training.runner import train

    recon_es = task_stopping(cfg.trainer.early_stopping, "recon", "trainer.early_stopping")
    stage = stage_config(cfg, None, {"stage": "joint", "monitor": "val_psnr"}, None)
    selection = JointSelection({"recon": recon_es, "seg": section.seg_stopping()})
    result = train(stage, resume=resume, callbacks=[selection])
    records = selection.records(result.convergence.get("stopped_by"))
    for task, rec in records.items():  # every validation of the task: [step, epoch, value, samples]
        rec["curve"] = selection.selection.task_curve(task) if selection.selection is not None else []
    modules = {}
    for task, rec in records.items():
        best = rec.get("checkpoint")
        if not best or not Path(best).is_file():
            raise input_error(f"{cfg.run_dir()}", f"no validation gave a finite {rec['monitor']}, so the {task} task "
                              "has no best checkpoint", "train longer (trainer.max_steps) or validate sooner")
        rec["steps"] = result.convergence.get("steps")
        modules[task] = _module_with(stage, Path(best))
    return modules["recon"], modules["seg"], records, result


def _fit_stages(cfg: ExperimentConfig, section: ReconSegRunConfig, pipeline: str,
                resume: bool = False) -> tuple[Any, Any, dict, Any]:
    from mrlearn.training.phases import train_phase

    records: dict[str, dict[str, Any]] = {}
    init = None
    if pipeline == "two_step":
        recon_es = task_stopping(cfg.trainer.early_stopping, "recon", "trainer.early_stopping")
        first = train_phase(stage_config(cfg, "recon", {"stage": "recon", "monitor": "val_psnr"}, recon_es), resume)
        records["recon"] = {**first.convergence, "checkpoint": str(first.best_checkpoint)}
        init = first.best_checkpoint
        if init is None or not init.is_file():
            raise input_error(first.run_dir, "the reconstruction stage wrote no best checkpoint",
                              "train longer (trainer.max_steps) or validate sooner")
    target = pipeline == "target"
    method = {"stage": "seg", "monitor": "val_dice", "seg_input": "target" if target else "reconstruction",
              "seg_eval_input": "target" if target else "reconstruction"}
    second = train_phase(stage_config(cfg, "seg", method, section.seg_stopping(), init), resume)
    records["seg"] = {**second.convergence, "checkpoint": str(second.best_checkpoint)}
    module = second.module  # holds the weights of its best checkpoint (evaluate_final)
    recon = None if target else module
    return recon, module, records, second


def merged_record(records: dict[str, dict[str, Any]], sequential: bool) -> dict[str, Any]:
    """One convergence record for the study row: converged only if every task's fit converged; ``steps``: the sum
    over sequential fits, else the run's steps."""
    merged = merge_records(list(records.values()))
    if sequential and len(records) > 1:
        merged["steps"] = sum(int(r.get("steps") or 0) for r in records.values())
    return merged


@register("runner", "recon_seg")
def study_runner(cfg: ExperimentConfig, resume: bool = False) -> RunOutcome:
    """Train the arm ``cfg.recon_seg_run.pipeline`` and score it on the test split (module docstring); ``resume``:
    continue an interrupted run folder from its checkpoints."""
    from mrlearn.training.phases import run_folder

    section = run_section(cfg)
    pipeline = section.pipeline
    check_arm(cfg, pipeline)
    if cfg.method.get("name") != "recon_seg":
        raise input_error("method.name", f"{cfg.method.get('name')!r}: the recon_seg runner trains method recon_seg",
                          "set method.name: recon_seg")
    if pipeline == "joint":  # one fit, held by the run folder of train()
        recon, seg, records, result = _fit_joint(cfg, section, resume)
        return _score(cfg, section, recon, seg, records, result)
    with run_folder(cfg, resume, "recon_seg") as folder:
        recon, seg, records, result = _fit_stages(cfg, section, pipeline, resume)
        outcome = _score(cfg, section, recon, seg, records, result)
        folder.finished()
    return outcome


def _score(cfg: ExperimentConfig, section: ReconSegRunConfig, recon: Any, seg: Any, records: dict[str, dict[str, Any]],
           result: Any) -> RunOutcome:
    """The test-split scores of the fitted arm, with its records (``selection.json``)."""
    from mrlearn.recon_seg.study_scoring import score_split
    from mrlearn.training.data import ReconDataModule

    pipeline = section.pipeline
    dm = ReconDataModule(cfg, keep_kspace=True)
    outcome = score_split(dm.eval_loader("test"), _OnDevice(seg, "segment"), int(seg.num_classes),
                          None if recon is None else _OnDevice(recon, "reconstruct"), _class_names(cfg, dm),
                          section.examples)
    if not outcome.groups:
        raise input_error("data.test", f"the test split ({cfg.data.test}) has no labelled volume to score",
                          "name a folder of fully sampled volumes with 'segmentation' labels as data.test")
    record = merged_record(records, sequential=pipeline == "two_step")
    outcome.extra.update({"pipeline": pipeline, "tasks": records, "convergence": record,
                          "val": {k: float(v) for k, v in result.metrics.items()}})
    write_json(cfg.run_dir() / "selection.json", {"pipeline": pipeline, "tasks": records, "merged": record})
    return outcome
