"""Checkpoints that are always whole and always finite: ``last.ckpt`` / ``best.ckpt``, and safe loading.

:class:`AtomicCheckpoint` saves ``checkpoints/last.ckpt`` every ``every_n_steps`` optimizer steps (0: never
mid-epoch), after every validation and at the end of every epoch, and ``checkpoints/best.ckpt`` when the monitored
validation metric improves. Rules that keep a run truthful:

* each file is written to ``<name>.tmp`` and moved into place with ``os.replace`` by rank 0 (a kill at any moment
  leaves the previous file whole; a failed write removes the ``.tmp`` and is a one-line error);
* weights are checked before every save: non-finite parameters or buffers are never written, so the last finite
  ``last.ckpt`` / ``best.ckpt`` survive (:class:`NonFiniteWeightsError`);
* no step checkpoint on the last batch of an epoch: Lightning resumes such a checkpoint in the next epoch and skips
  that epoch's validation and epoch-end hooks, so the end-of-epoch save (after validation) is the one used;
* no step checkpoint before the first optimizer step (``global_step`` 0): a resumed run skips the batches its
  steps trained on, and a method that takes no optimizer step (convex layer-wise: it gathers an epoch's data, then
  solves) would lose what it gathered; its checkpoints fall at epoch ends, so an interrupted epoch runs again whole;
* a stop request (:class:`~mrlearn.engine.signals.GracefulStop`, SIGTERM/SIGINT) is honoured right after a save
  point: the checkpoint is written, then :class:`~mrlearn.errors.RunInterrupted` is raised;
* ``checkpoints/at_stop/`` keeps the run as it was when its stopping rule first fired (any task's, for a
  :class:`~mrlearn.engine.task_selection.TaskSelection`), else at the end of training (a cap): ``state.ckpt``
  (``last.ckpt`` then) and every ``best*.ckpt`` of that moment, hard links where the file system allows. A
  stopping check continues from there with a longer window (:mod:`mrlearn.study.stopping_check`).

Checkpoints hold only tensors and plain Python types and load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import io
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mrlearn import registry
from mrlearn.engine.runfolder import describe_checkpoints
from mrlearn.errors import MrlearnError, NonFiniteError, input_error
from mrlearn.io import atomic_path

__all__ = ["AtomicCheckpoint", "NonFiniteWeightsError", "PlainCheckpointIO", "describe_checkpoints", "first_non_finite", "load_checkpoint",
           "load_weights"]


AT_STOP = "at_stop"  # checkpoints/at_stop/: the run where its stopping rule first fired


class NonFiniteWeightsError(NonFiniteError):
    """The weights became NaN or infinite; nothing was written (the message names the checkpoints that remain)."""

    checkpoints_noted = True


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def first_non_finite(module: torch.nn.Module) -> str | None:
    """Name of the first parameter or floating buffer of ``module`` holding NaN/Inf (all ranks agree), else None."""
    bad_name = None
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() or tensor.is_complex():
            if not bool(torch.isfinite(tensor.detach()).all()):
                bad_name = name
                break
    if _dist():
        flag = torch.tensor([0.0 if bad_name is None else 1.0], device=next(module.parameters()).device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0 and bad_name is None:
            bad_name = "(on another process)"
    return bad_name


class PlainCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing the bytes with a plain local file (no fsspec temporary file in
    another folder): the caller (:func:`mrlearn.io.atomic_path`) owns the temporary name, and a full disk surfaces as
    the ``OSError`` it is."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with open(path, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()


class AtomicCheckpoint(Checkpoint):
    """Step, validation and epoch-end checkpoints written atomically; tracks the best ``monitor`` (``mode`` max/min).

    ``stop``: an object with ``requested() -> int | None`` (a signal number) and ``sync(trainer)``; when a stop is
    requested the current state is saved and :class:`~mrlearn.errors.RunInterrupted` raised.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0, monitor: str = "val_ssim", mode: str = "max",
                 stop: Any = None):
        super().__init__()
        self.dirpath = Path(dirpath).absolute()  # paths in metrics.json must not depend on the working directory
        self.every_n_steps = int(every_n_steps)
        self.monitor, self.mode = monitor, mode
        self.stop = stop
        self.best_score: float | None = None
        self.best_path: str | None = None
        self.best_step: int | None = None
        self._last_step_saved = -1

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _save(self, trainer: L.Trainer, path: Path) -> None:
        bad = first_non_finite(trainer.lightning_module)
        if bad is not None:
            raise NonFiniteWeightsError(
                f"training: weights became non-finite ({bad} holds NaN/Inf) at step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}); the run stopped without writing them; "
                f"{describe_checkpoints(self.dirpath)}; lower optim.lr or set trainer.gradient_clip_val")
        if trainer.is_global_zero:
            with atomic_path(path) as tmp:
                trainer.save_checkpoint(str(tmp), weights_only=False)
        else:
            trainer.save_checkpoint(str(path.with_name(path.name + ".tmp")), weights_only=False)  # collective
        trainer.strategy.barrier("mrlearn_checkpoint")

    def save_last(self, trainer: L.Trainer) -> None:
        self._save(trainer, self.last_path)
        self._last_step_saved = trainer.global_step

    def _stop_if_requested(self, trainer: L.Trainer, save: bool) -> None:
        if self.stop is None:
            return
        signum = self.stop.sync(trainer)
        if signum:
            if save and trainer.global_step != self._last_step_saved:
                self.save_last(trainer)
            self.stop.interrupt(trainer, signum, self.last_path if self.last_path.is_file() else None)

    @staticmethod
    def _last_batch_of_epoch(trainer: L.Trainer, batch_idx: int) -> bool:
        n = trainer.num_training_batches
        return n != float("inf") and batch_idx + 1 >= n

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._last_batch_of_epoch(trainer, batch_idx):
            return  # saved after validation / at the epoch end instead (see the module docstring)
        stepped = trainer.global_step > 0 and trainer.global_step != self._last_step_saved
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0 and stepped:
            self.save_last(trainer)
        self._stop_if_requested(trainer, save=trainer.global_step > 0)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is not None:
            value = float(score)
            better = self.best_score is None or (value > self.best_score if self.mode == "max" else value < self.best_score)
            if math.isfinite(value) and better:
                self.best_score, self.best_step = value, int(trainer.global_step)
                self.best_path = str(self.dirpath / "best.ckpt")
                self._save(trainer, self.dirpath / "best.ckpt")
        self.save_last(trainer)
        from mrlearn.engine.convergence import Convergence, find_callback

        rule = find_callback(trainer, Convergence)
        if rule is not None and rule.has_stopped():
            self.keep_at_stop(trainer)
        self._stop_if_requested(trainer, save=False)

    def keep_at_stop(self, trainer: L.Trainer) -> None:
        """Freeze ``checkpoints/at_stop/`` (see the module docstring) unless it exists."""
        folder = self.dirpath / AT_STOP
        if folder.exists() or not trainer.is_global_zero or not self.last_path.is_file():
            return
        tmp = folder.with_name(AT_STOP + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for src in [self.last_path, *sorted(self.dirpath.glob("best*.ckpt"))]:
            dst = tmp / ("state.ckpt" if src == self.last_path else src.name)
            try:
                os.link(src, dst)  # the saved files are replaced, never rewritten in place: a link stays as it is
            except OSError:
                shutil.copy2(src, dst)
        os.replace(tmp, folder)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step_saved:
            self.save_last(trainer)
        self._stop_if_requested(trainer, save=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step_saved:
            self.save_last(trainer)
        self.keep_at_stop(trainer)  # no rule fired: the end of training (a cap) is where a longer run goes on

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_path": self.best_path, "best_step": self.best_step,
                "monitor": self.monitor, "mode": self.mode}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        # best.ckpt of THIS run folder: a stored path may be relative to the working directory of an earlier
        # process, where it could name another run's file
        self.best_path = str(self.dirpath / "best.ckpt") if state_dict.get("best_path") else None
        self.best_step = state_dict.get("best_step")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {lines[0][:120]}" if lines else exc.__class__.__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on CPU with one-line errors for missing, empty or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "checkpoint not found", "give the path of a .ckpt file (runs/<name>/checkpoints/last.ckpt)")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise input_error(path, f"cannot read the checkpoint ({exc.strerror})", "check the file's permissions") from None
    if size == 0:
        raise input_error(path, "checkpoint is empty (0 bytes)",
                          "the file was cut off; use checkpoints/best.ckpt or start the run again") from None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:  # e.g. no read permission: the file may be fine
        raise input_error(path, f"cannot read the checkpoint ({exc.strerror or exc})", "check the file's permissions") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad file for the user
        raise input_error(path, f"cannot load checkpoint, truncated or not a checkpoint ({_first_line(exc)})",
                          "use a checkpoint written by mrlearn train") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise input_error(path, "not an mrlearn/Lightning checkpoint (no state_dict)", "use a checkpoint written by mrlearn train")
    return ckpt


@contextmanager
def plugins_needed(ckpt: dict[str, Any], where: str | Path) -> Iterator[None]:
    """Around building the model of ``ckpt``: an unknown entry (model, method, ...) whose checkpoint names plugin
    modules that are not loaded (``checkpoint["mrlearn"]["plugins"]``) becomes one line saying which and what to do."""
    try:
        yield
    except MrlearnError as exc:
        extra = ckpt.get("mrlearn") if isinstance(ckpt.get("mrlearn"), dict) else {}
        stored = [m for m in extra.get("plugins") or [] if isinstance(m, str)]
        missing = registry.missing_plugins(stored)
        if not missing:
            raise
        first = str(exc).split(";")[0]
        raise input_error(where, f"{first} -- the checkpoint was trained with plugin module(s) {', '.join(missing)}",
                          registry.plugin_advice(missing)) from None


def load_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: str | Path) -> None:
    """Load ``state_dict`` strictly; a mismatch is a one-line error naming the first differing keys/shapes.

    U-Net weights under mrlearn's earlier names (before fastMRI's) are renamed first (``models.unet``)."""
    from mrlearn.models.unet import upgrade_legacy_keys

    own = module.state_dict()
    state_dict = upgrade_legacy_keys(state_dict, own)
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and torch.is_tensor(v) and tuple(getattr(state_dict[k], "shape", ())) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch: {', '.join(shapes[:2])}")
        if missing:
            parts.append(f"missing {len(missing)} weights (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights (e.g. {unexpected[0]})")
        raise input_error(where, f"checkpoint does not fit the model: {'; '.join(parts)}",
                          "use the config the checkpoint was trained with (its config.yaml)")
    module.load_state_dict(state_dict, strict=True)
