"""Model selection and early stopping per task, for methods that train several tasks in one model (multi-task,
pooled): each task is selected on its own validation metric, not on the mean over tasks.

:class:`TaskSelection` takes the place of a run's :class:`~mrlearn.engine.convergence.Convergence` (it copies its
settings: patience or patience in samples, smoothing, ``min_delta``, learning-rate cuts) and holds one
``Convergence`` per task, each watching that task's metric (``monitors``: task -> logged name, e.g.
``val_psnr/pd``):

* best checkpoint per task: ``checkpoints/best_<task>.ckpt``, written when the task's raw metric beats its best so
  far (strictly, finite values only, as ``best.ckpt``), atomically and never with non-finite weights (by the
  run's :class:`~mrlearn.engine.checkpoint.AtomicCheckpoint`);
* the plateau rule of :mod:`mrlearn.engine.plateau` per task. A task's window in samples (``patience_samples``)
  and its ``samples_at_best`` count that task's own training samples (the module's ``samples_per_task()``; the
  run's total when it has none), so a scarce task is judged on the samples it saw. Once a task's rule fires its
  selection is final: later validations are kept in its curve (``after``) but move neither its best checkpoint
  nor its record. The run stops when every task's rule has fired (``stopped_by: early_stopping``), else at a cap;
* learning-rate cuts (``lr_patience``; one optimizer serves every task): a cut is made when every task still
  running asks for one; a task that asks earlier waits (it keeps asking at each validation, and cannot stop
  before its cuts are used), and each cut restarts the window of every running task. All running tasks have
  therefore seen the same cuts, and each stops only after a full window at the final rate;
* the joint ``monitor`` (``best.ckpt``) is still recorded as the run's series but decides nothing.

The state of every task travels in checkpoints (``state_dict``), so a resumed run continues each series.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import lightning as L

from mrlearn.engine.convergence import Convergence, find_callback
from mrlearn.engine.plateau import improved
from mrlearn.errors import input_error


def samples_at_best(conv: Convergence) -> int | None:
    """Training samples seen at ``conv``'s best raw validation (the counts it pushed to its plateau), or None."""
    best = conv.best_entry()
    if best is None:
        return None
    i = next(i for i, e in enumerate(conv.series) if e is best)
    return int(conv.plateau.samples[i]) if i < len(conv.plateau.samples) else None


class TaskSelection(Convergence):
    """One best checkpoint and one stopping rule per task (see the module docstring).

    ``base``: the run's ``Convergence`` (fresh, before any validation), whose settings every task takes;
    ``monitors``: task name -> the metric its module logs for that task (same direction as ``base.mode``);
    ``rules``: task name -> a fresh ``Convergence`` whose settings (mode, patience, ``min_delta``, ...) that task
    takes instead of ``base``'s (tasks whose metrics have different units, e.g. PSNR and Dice).
    """

    def __init__(self, base: Convergence, monitors: dict[str, str], rules: dict[str, Convergence] | None = None):
        super().__init__(base.monitor, base.mode)
        self.__dict__.update(copy.deepcopy(base.__dict__))  # every setting of the run's rule, now or added later
        for name in monitors:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise input_error("tasks.tasks", f"task name {name!r} cannot name a checkpoint file",
                                  "use letters, digits, '_', '.' or '-'")
        self.tasks: dict[str, Convergence] = {}
        for name, metric in monitors.items():
            conv = copy.deepcopy((rules or {}).get(name, base))
            conv.monitor = metric
            self.tasks[name] = conv
        self.stop_at: dict[str, list[int] | None] = dict.fromkeys(monitors)  # [step, epoch, samples]
        self.best: dict[str, dict[str, Any] | None] = dict.fromkeys(monitors)
        self.after: dict[str, list[list[float]]] = {t: [] for t in monitors}  # [step, epoch, value, samples]
        self.cuts = 0

    # ------------------------------------------------------------------ the joint record, from the tasks
    @property
    def lr_reductions(self) -> int:
        return self.cuts

    def still_improving(self) -> bool:
        """Whether a task whose rule has not fired is still improving (its last improvement within its window)."""
        return any(self.stop_at[t] is None and c.still_improving() for t, c in self.tasks.items())

    # ------------------------------------------------------------------ hooks
    def _task_samples(self, pl_module: L.LightningModule) -> dict[str, int]:
        counts = getattr(pl_module, "samples_per_task", None)
        return dict(counts()) if callable(counts) else {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        step, epoch = int(trainer.global_step), int(trainer.current_epoch)
        joint = metrics.get(self.monitor)
        if joint is not None:
            self.series.append([step, epoch, float(joint)])
            self.plateau.push(float(joint), self.samples)  # recorded (smoothed_best); decides nothing
        counts = self._task_samples(pl_module)
        asked: dict[str, tuple[str | None, int, tuple[int, int]]] = {}
        for name, conv in self.tasks.items():
            value = metrics.get(conv.monitor)
            if value is None:
                logged = sorted(k for k in metrics if k.startswith("val"))
                if logged and not conv.series:
                    raise input_error("trainer.early_stopping.monitor", f"{conv.monitor!r} (task {name}) is not logged "
                                      f"by this method (its validation logs {', '.join(logged[:8])})",
                                      "monitor a metric the method logs per task (val_psnr, val_ssim, val_nmse)")
                continue
            value, seen = float(value), int(counts.get(name, self.samples))
            if self.stop_at[name] is not None:
                self.after[name].append([step, epoch, value, seen])
                continue
            before = (conv.plateau.cuts, conv.plateau.anchor)
            conv.series.append([step, epoch, value])
            conv.samples = seen
            asked[name] = (conv.plateau.push(value, seen), before[0], before[1])
            record = self.best[name]
            if improved(value, None if record is None else record["score"], conv.mode):
                self.best[name] = {"step": step, "epoch": epoch, "score": value, "samples": seen,
                                   "checkpoint": self._save_best(trainer, name)}
        for name, (action, _, _) in asked.items():
            if action == "stop":
                self.stop_at[name] = [step, epoch, int(counts.get(name, self.samples))]
                self.tasks[name].stopped_early = True
        running = [t for t in self.tasks if self.stop_at[t] is None]
        wants = [t for t in running if t in asked and asked[t][0] == "cut"]
        if wants and len(wants) == len(running):
            self.cuts += 1
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = group["lr"] * self.lr_factor
        else:  # not every running task asks: no cut yet; those that asked keep their window and ask again
            for t in wants:
                self.tasks[t].plateau.cuts, self.tasks[t].plateau.anchor = asked[t][1], asked[t][2]
        if not running:
            self.stopped_early = True
            trainer.should_stop = True

    def _save_best(self, trainer: L.Trainer, name: str) -> str | None:
        from mrlearn.engine.checkpoint import AtomicCheckpoint

        ckpt = find_callback(trainer, AtomicCheckpoint)
        if ckpt is None:
            return None
        path = ckpt.dirpath / f"best_{name}.ckpt"
        ckpt._save(trainer, path)
        return str(path)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["cuts"] = self.cuts
        state["tasks"] = {t: {"convergence": c.state_dict(), "stop_at": self.stop_at[t], "best": self.best[t],
                              "after": [list(a) for a in self.after[t]]} for t, c in self.tasks.items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.cuts = int(state_dict.get("cuts", 0))
        for t, saved in (state_dict.get("tasks") or {}).items():
            if t not in self.tasks:
                continue
            self.tasks[t].load_state_dict(saved["convergence"])
            self.stop_at[t] = saved.get("stop_at")
            self.best[t] = saved.get("best")
            self.after[t] = [list(a) for a in saved.get("after", [])]
            if self.stop_at[t] is not None:  # a longer window reopens a task stopped at the saved validation
                if self.after[t] or self.tasks[t].stopped_early:  # (not one that went on: its weights are gone)
                    self.tasks[t].stopped_early = True
                else:
                    self.stop_at[t] = None
        if state_dict.get("tasks"):
            self.stopped_early = all(self.stop_at[t] is not None for t in self.tasks)

    def has_stopped(self) -> bool:
        return any(at is not None for at in self.stop_at.values())

    # ------------------------------------------------------------------ summaries
    def task_records(self, run_stopped_by: str | None) -> dict[str, dict[str, Any]]:
        """Per task: ``monitor``, ``best_step``, ``best_score``, ``samples_at_best`` (that task's samples),
        ``checkpoint`` (``best_<task>.ckpt``), ``stop_step`` and ``stop_samples`` (where its rule fired, else where the
        run ended), ``stopped_by`` (``early_stopping`` when its rule fired, else what ended the run), ``converged``
        (its rule fired, or its smoothed metric was no longer improving at the end), ``validations``."""
        out = {}
        for t, conv in self.tasks.items():
            best, stop = self.best[t] or {}, self.stop_at[t]
            last = conv.series[-1] if conv.series else None
            out[t] = {"monitor": conv.monitor, "mode": conv.mode, "best_step": best.get("step"),
                      "best_score": best.get("score"), "samples_at_best": best.get("samples"),
                      "checkpoint": best.get("checkpoint"),
                      "stop_step": stop[0] if stop else (int(last[0]) if last else None),
                      "stop_samples": stop[2] if stop else (conv.samples if last else None),
                      "stopped_by": "early_stopping" if stop else run_stopped_by,
                      "converged": True if stop else bool(conv.series) and not conv.still_improving(),
                      "validations": len(conv.series), "lr_reductions": self.cuts,
                      "smoothed_best": conv.plateau.best}
        return out

    def task_curve(self, name: str) -> list[list[float]]:
        """``[step, epoch, value, samples]`` of every validation of task ``name`` (also after its rule fired)."""
        conv = self.tasks[name]
        own = [[*e, s] for e, s in zip(conv.series, conv.plateau.samples)]
        return own + [list(a) for a in self.after[name]]


def use_task_selection(trainer: L.Trainer, monitors: dict[str, str],
                       rules: dict[str, Convergence] | None = None) -> TaskSelection:
    """Put a :class:`TaskSelection` with ``monitors`` (and per-task ``rules``) in place of ``trainer``'s
    ``Convergence`` (same settings and the same place among the callbacks); returns it."""
    for i, cb in enumerate(trainer.callbacks):
        if type(cb) is Convergence:
            trainer.callbacks[i] = TaskSelection(cb, monitors, rules)
            return trainer.callbacks[i]
    raise RuntimeError("the trainer has no Convergence callback to replace")
