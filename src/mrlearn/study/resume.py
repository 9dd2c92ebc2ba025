"""What to do with an unfinished run folder whose holder is gone: resume it from its checkpoint, or clear it.

A run folder without ``result.json`` that no live process holds was left by a killed worker, a lost node, a
signal or an error. :func:`prepare_folder` decides, before the run starts again:

* **resume** (the runner is called with ``resume=True``, and the engine continues from ``last.ckpt`` with its
  exact state) when the folder holds a ``last.ckpt`` (``checkpoints/last.ckpt``, or one per phase/task below
  it), its ``run.json`` says ``running`` (the process died) or ``interrupted`` (a signal), the runner accepts a
  ``resume`` keyword, and the folder's ``config.yaml`` asks for the same run (up to
  :data:`mrlearn.engine.runfolder.RESUMABLE_CHANGES`; relative paths of older runs are compared as absolute); a
  stopping check's folder seeded from its run (status ``warm_start``, :mod:`mrlearn.study.stopping_check`) too;
* otherwise the folder is **cleared** (the run lease file kept) and the run starts from step 0, with the reason:
  no checkpoint yet, the previous attempt failed (an error, e.g. NaN: resuming would repeat it), the runner cannot
  resume, or the config changed.
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path
from typing import Any, Callable

from mrlearn.io import read_json

WARM = "warm_start"  # run.json status of a stopping check seeded with its run's checkpoints (study.stopping_check)


def clear_folder(folder: Path, keep: str) -> None:
    """Remove everything in ``folder`` except the file ``keep`` (the run's lease)."""
    for child in folder.iterdir():
        if child.name == keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def accepts_resume(runner: Callable[..., Any]) -> bool:
    """Whether ``runner`` takes a ``resume`` keyword (it can continue a run folder from its checkpoints)."""
    try:
        return "resume" in inspect.signature(runner).parameters
    except (TypeError, ValueError):
        return False


def checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` stored in a Lightning checkpoint (None when unreadable)."""
    try:
        import torch

        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is not resumable
        return None


def _config_change(run_dir: Path, cfg: Any) -> str | None:
    """The first key in which ``run_dir/config.yaml`` differs from ``cfg`` (None: the same run)."""
    from mrlearn.config import dump_config
    from mrlearn.engine.runfolder import config_changes
    from mrlearn.study.paths import absolute_config_text

    old = run_dir / "config.yaml"
    if not old.is_file():
        return None
    changes = config_changes(absolute_config_text(old.read_text(encoding="utf-8")), dump_config(cfg))
    return None if not changes else f"{changes[0][0]}: {changes[0][1]!r} -> {changes[0][2]!r}"


def prepare_folder(run_dir: Path, cfg: Any, runner: Callable[..., Any], keep: str) -> tuple[dict[str, Any] | None, list[str]]:
    """Resume or clear the unfinished ``run_dir`` (module docstring); returns ``(resume, notes)`` where ``resume`` is
    ``{"checkpoint": path, "step": n, "attempt": k}`` to resume, None to start from step 0."""
    if not any(p.name != keep for p in run_dir.iterdir()):
        return None, []
    info = read_json(run_dir / "run.json") or {}
    status = info.get("status")
    ckpts = sorted(run_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    steps = [s for s in (checkpoint_step(p) for p in ckpts) if s is not None]
    if not ckpts:
        why = "unfinished folder (no live holder) cleared, starting again"
    elif status == "failed":
        why = f"previous attempt failed ({info.get('error') or 'no reason recorded'}); folder cleared, starting again"
    elif status not in ("running", "interrupted", WARM):
        why = f"unfinished folder (run.json status {status or 'missing'}) cleared, starting again"
    elif not accepts_resume(runner):
        why = f"its runner ({getattr(runner, '__name__', runner)}) cannot resume; folder cleared, starting again"
    elif len(steps) < len(ckpts):
        why = "a last.ckpt is unreadable; folder cleared, starting again"
    elif (change := _config_change(run_dir, cfg)) is not None:
        why = f"its config.yaml asks for another run ({change}); folder cleared, starting again"
    elif status == WARM:
        resume = {"checkpoint": str(ckpts[-1]), "step": steps[-1], "attempt": 1, "forked_from": info.get("forked_from")}
        return resume, [f"continuing {info.get('forked_from')} from where its stopping rule fired (step {steps[-1]})"]
    else:
        resume = {"checkpoint": str(ckpts[-1]), "step": steps[-1], "attempt": int(info.get("attempts", 1)) + 1}
        return resume, [f"resuming from {ckpts[-1]} (step {steps[-1]}, attempt {resume['attempt']})"]
    clear_folder(run_dir, keep)
    return None, [why]
