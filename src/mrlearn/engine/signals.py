"""SIGTERM, SIGINT and SIGHUP during training: save a resumable checkpoint, record the state, exit 143 / 130 / 129.

:class:`GracefulStop` is a Lightning callback that owns the two signals while a fit runs. A signal during training
only sets a flag; the checkpoint callback (:class:`~mrlearn.engine.checkpoint.AtomicCheckpoint`) looks at it at its
next save point (after the current optimizer step, or after the running validation), writes ``last.ckpt`` with the
position inside the epoch and raises :class:`~mrlearn.errors.RunInterrupted`. Under DDP the flag is combined over
all processes at each save point, so every rank stops at the same step. A signal before the first training step
(data set-up) or a second signal stops at once (nothing new to save).

Lightning installs its own SIGTERM handler at the start of a fit (it would only stop at the epoch end and exit
silently); ours is installed again when training starts and the previous handlers come back at teardown.
"""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mrlearn.errors import RunInterrupted

SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None)


def resume_command(run_dir: str | Path) -> str:
    """The command that continues the ``mrlearn train`` run in ``run_dir``."""
    return f"mrlearn train --resume --out {shlex.quote(str(run_dir))}"


class GracefulStop(L.Callback):
    """Turns SIGTERM/SIGINT/SIGHUP into a checkpoint and :class:`~mrlearn.errors.RunInterrupted` (see the module
    docstring).

    ``run_dir``: the run folder (its ``checkpoints/last.ckpt`` is named in messages); ``resume``: the command that
    continues the run (default :func:`resume_command`).
    """

    def __init__(self, run_dir: str | Path, resume: str | None = None):
        self.run_dir = Path(run_dir)
        self.resume = resume or resume_command(run_dir)
        self.signum: int | None = None
        self.armed = False
        self.active = False
        self.stage = "setup"  # setup | training | done
        self._previous: dict[int, Any] = {}
        self._originals: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None

    # ------------------------------------------------------------------ handlers
    def install(self) -> None:
        """Own SIGTERM, SIGINT and SIGHUP (main thread only; elsewhere signals keep their handlers)."""
        for sig in SIGNALS:
            try:
                previous = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                return
            if previous is not self._handle:
                self._previous.setdefault(int(sig), previous)
                self._originals.setdefault(int(sig), previous)
        self.active = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            try:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except ValueError:
                pass
        self._previous, self.active, self.armed = {}, False, False

    def _checkpoint(self) -> Path | None:
        last = self.run_dir / "checkpoints" / "last.ckpt"
        return last if last.is_file() else None

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.active:  # left installed by a later restore (Lightning's teardown): hand over to the original
            original = self._originals.get(int(signum), signal.SIG_DFL)
            signal.signal(signum, original if original is not None else signal.SIG_DFL)
            if callable(original):
                original(signum, frame)
            elif original != signal.SIG_IGN:
                os.kill(os.getpid(), signum)
            return
        if self.armed and self.signum is None:
            self.signum = int(signum)
            return
        trainer = self._trainer
        if self.stage == "setup":
            where = "before the first training step"
        elif trainer is not None:
            where = f"at step {trainer.global_step} (epoch {trainer.current_epoch})"
            where += " (second signal)" if self.armed else " after training"
        else:
            where = "after training"
        raise RunInterrupted(signum, where, self._checkpoint(), self.resume)

    # ------------------------------------------------------------------ used by the checkpoint callback
    def requested(self) -> int | None:
        return self.signum

    def sync(self, trainer: L.Trainer) -> int | None:
        """The signal any process received (0/None: none); the same answer on every DDP rank."""
        value = self.signum or 0
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            flag = torch.tensor([float(value)], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            value = int(flag.item())
        return value or None

    def interrupt(self, trainer: L.Trainer, signum: int, checkpoint: Path | None) -> None:
        self.armed = False
        raise RunInterrupted(signum, f"at step {trainer.global_step} (epoch {trainer.current_epoch})", checkpoint,
                             self.resume)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage == "fit":
            self.signum, self.stage = None, "setup"
            self.install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()  # Lightning registered its SIGTERM handler after setup; take the signals back
        self.armed, self.stage = True, "training"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.armed, self.stage = False, "done"

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.restore()
