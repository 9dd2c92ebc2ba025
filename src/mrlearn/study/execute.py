"""One study run, as every executor runs it (in this process, a local worker process or a Ray task).

:func:`run_job` claims the run folder with a :class:`RunLock` (``OUT/runs/<id>/.study.lock``: PID, host, start),
so several workers - or several ``mrlearn study`` processes - share one study folder safely:

* a finished run (``result.json``) is skipped;
* a run held by a live process (its study lock, or the engine's ``.lock`` of a training in it) is left alone and
  reported ``busy``: nothing deletes a folder a live process holds;
* an unfinished folder whose holder is dead (killed worker, crashed machine on this host) is cleared and the run
  started again, with a message;
* otherwise the run is built (``run_config``), run by its runner and its outcome written (``result.json`` last),
  each per-slice row labelled with its file's subject (``study.subjects``).
  Inside the runner, progress lines (training, solvers, fits: :mod:`mrlearn.progress`) start with
  ``[k/n] <run id>`` and follow the run's ``trainer.progress_every``.

The study lock is a separate file from the engine's run-folder lock (``.lock``, taken by the runner's training), so
the two never release each other. A :class:`StudyLock` (``OUT/.study.lock``) serialises writes of the study-level
files (``study.yaml``, ``study.csv``, ``report.html``) between processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from mrlearn.io import safe_child
from mrlearn.config import dump_config
from mrlearn.errors import MrlearnError
from mrlearn.io import FolderLock, is_locked_by_other
from mrlearn.progress import progress_context
from mrlearn.study.results import is_finished, write_outcome
from mrlearn.study.spec import RunSpec, StudySpec, run_config
from mrlearn.study.subjects import label_subjects


class RunLock(FolderLock):
    """The lock a study worker holds on one run folder while it runs it."""

    NAME = ".study.lock"


class StudyLock(FolderLock):
    """The lock on a study folder held while its study-level files are written."""

    NAME = ".study.lock"


@contextlib.contextmanager
def study_files_lock(out: Path, timeout: float = 300.0) -> Iterator[None]:
    """Hold ``out``'s :class:`StudyLock`, waiting (up to ``timeout`` s) while another live process writes."""
    lock = StudyLock(out, what="study")
    deadline = time.monotonic() + timeout
    unheld = 0
    while True:
        try:
            lock.acquire()
            break
        except MrlearnError:
            if lock.holder() is None:  # twice not held yet not taken: the folder cannot be written (read-only, full)
                unheld += 1
                if unheld > 1:
                    raise
                continue
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield
    finally:
        lock.release()


@dataclass
class Job:
    """Everything a worker needs to run one run (picklable: sent to worker processes and Ray tasks)."""

    spec: StudySpec
    run: RunSpec
    out: str  # absolute study folder
    runner: Callable[[Any], Any]
    index: int = 1
    total: int = 1
    threads: int | None = None  # torch intra-op threads in the worker (None: leave as is)
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return safe_child(Path(self.out) / "runs", self.run.run_id, f"{self.spec.name}: run id")


def clear_folder(folder: Path, keep: str = RunLock.NAME) -> None:
    """Remove everything in ``folder`` except the lock file ``keep``."""
    for child in folder.iterdir():
        if child.name == keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _holder_text(lock: FolderLock) -> str:
    info = lock.holder() or {}
    return f"process {info.get('pid', '?')} on {info.get('host', '?')}"


def _progress_every(cfg: Any) -> float | None:
    """The run's ``trainer.progress_every`` (None: the default), for every loop inside the run."""
    trainer = getattr(cfg, "trainer", None)
    return getattr(trainer, "progress_every", None) if trainer is not None else None


def run_job(job: Job) -> dict[str, Any]:
    """Run ``job`` if no one else does; returns ``{"status": finished|skipped|busy|error, ...}``.

    ``error`` carries the one-line message of a :class:`MrlearnError` (a user error inside the run); any other
    exception propagates (a bug: the executor re-raises it).
    """
    run_dir = job.run_dir
    rid = job.run.run_id
    if is_finished(run_dir):
        return {"status": "skipped", "run_id": rid, "message": "finished before, skipped"}
    lock = RunLock(run_dir, what="study run")
    for attempt in (0, 1):
        try:
            lock.acquire()
            break
        except MrlearnError as exc:
            if lock.holder() is not None:
                return {"status": "busy", "run_id": rid, "message": f"being run by {_holder_text(lock)}; left to it"}
            if attempt:  # twice not held yet not taken: the folder cannot be written (read-only, disk full)
                return {"status": "error", "run_id": rid, "message": f"study run {rid}: {exc}"}
    try:
        if is_finished(run_dir):
            return {"status": "skipped", "run_id": rid, "message": "finished by another worker, skipped"}
        if is_locked_by_other(run_dir):
            return {"status": "busy", "run_id": rid,
                    "message": f"its folder is held by {_holder_text(FolderLock(run_dir))}; left to it"}
        notes = []
        if any(p.name != RunLock.NAME for p in run_dir.iterdir()):
            clear_folder(run_dir)
            notes.append("unfinished folder (no live holder) cleared, starting again")
        if job.threads:
            import torch

            torch.set_num_threads(int(job.threads))
        cfg = run_config(job.spec, job.run, run_dir)
        start = time.time()
        try:
            with progress_context(f"[{job.index}/{job.total}] {rid}", _progress_every(cfg)):
                outcome = job.runner(cfg)
        except MrlearnError as exc:
            return {"status": "error", "run_id": rid, "message": f"study run {rid}: {exc}"}
        seconds = time.time() - start
        outcome.slices = label_subjects(cfg, outcome.slices)  # the files' patient_id: the unit of replication
        write_outcome(run_dir, job.run, outcome, seconds, config=dump_config(cfg))
        return {"status": "finished", "run_id": rid, "seconds": seconds, "groups": outcome.groups, "notes": notes,
                "pid": os.getpid()}
    finally:
        lock.release()
