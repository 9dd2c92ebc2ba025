"""One study run, as every executor runs it (in this process, a local worker process or a Ray task).

:func:`run_job` claims the run folder with a :class:`RunLock` (``OUT/runs/<id>/.study.lock``: a lease with PID,
host and a heartbeat, :mod:`mrlearn.lease`), so several workers - or several ``mrlearn study`` processes on several
machines - share one study folder safely:

* a finished run (``result.json``) is skipped;
* a run held by a live lease of another study (its study lock, or the engine's ``.lock`` of a training in it) is
  left alone and reported ``busy``: nothing deletes a folder a live process holds;
* a lease of an earlier attempt of the same run in the same study (``Job.owner``: a worker or node that died, and
  the executor retried the run) is waited for until its process is gone or its heartbeat expired, then taken over;
* an unfinished folder whose holder is gone is resumed from its last checkpoint or cleared
  (:func:`mrlearn.study.resume.prepare_folder`), with a message;
* otherwise the run's config (built where the study started, paths absolute: ``Job.config``) is run by its runner
  and its outcome written (``result.json`` last), each per-slice row labelled with its file's subject
  (``study.subjects``). Inside the runner, progress lines (:mod:`mrlearn.progress`) start with ``[k/n] <run id>``.
  A run on several processes (``trainer.devices`` > 1, DDP) is run by a child process whose Lightning starts the
  ranks (:mod:`mrlearn.study.ranks`); this process keeps the lease and writes ``result.json`` from what the
  child's rank 0 reports.

A run that fails returns ``status: error`` with one line - run id, the error's first line and ``error.log`` in
its folder (the full traceback) - and never stops the other runs. A signal (``RunInterrupted``) propagates.

The study lock is a separate file from the engine's run-folder lock (``.lock``, taken by the runner's training), so
the two never release each other. A :class:`StudyLock` (``OUT/.study.lock``) serialises writes of the study-level
files (``study.yaml``, ``study.csv``, ``report.html``) between processes.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from mrlearn.config import dump_config
from mrlearn.errors import MrlearnError, RunInterrupted
from mrlearn.io import FolderLock, atomic_write_text, is_locked_by_other, safe_child
from mrlearn.lease import describe, lease_state
from mrlearn.progress import progress_context
from mrlearn.study.ranks import RankError, process_count, run_ranks
from mrlearn.study.results import is_finished, write_outcome
from mrlearn.study.resume import clear_folder as _clear, prepare_folder
from mrlearn.study.spec import RunSpec, StudySpec, run_config
from mrlearn.study.stopping_check import seed_from_stop
from mrlearn.study.subjects import label_subjects


class RunLock(FolderLock):
    """The lease a study worker holds on one run folder while it runs it."""

    NAME = ".study.lock"


class StudyLock(FolderLock):
    """The lease on a study folder held while its study-level files are written."""

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
    """Everything a worker needs to run one run (picklable: sent to worker processes and Ray tasks).

    ``config``: the run's ExperimentConfig built where the study started (relative paths made absolute there), None
    to build it in the worker; ``owner``: the id of the study process that submitted the job (its leases carry it);
    ``after``: the run id this one continues (a warm stopping check): executors start it once that run has ended,
    and :func:`run_job` seeds its folder from that run's stop (:func:`mrlearn.study.stopping_check.seed_from_stop`).
    """

    spec: StudySpec
    run: RunSpec
    out: str  # absolute study folder
    runner: Callable[..., Any]
    index: int = 1
    total: int = 1
    threads: int | None = None  # torch intra-op threads in the worker (None: leave as is)
    resources: dict[str, float] = field(default_factory=dict)
    config: Any = None
    owner: str | None = None
    after: str | None = None

    @property
    def run_dir(self) -> Path:
        return safe_child(Path(self.out) / "runs", self.run.run_id, f"{self.spec.name}: run id")


def next_ready(pending: Sequence[Job], running: Sequence[Job]) -> int | None:
    """Index of the first pending job that may start: its ``after`` run is neither pending nor running (None: wait
    for a running one; the first pending job when nothing runs, so a queue never stalls)."""
    waiting = {j.run.run_id for j in [*pending, *running]}
    for i, job in enumerate(pending):
        if job.after is None or job.after not in waiting:
            return i
    return None if running else (0 if pending else None)


def clear_folder(folder: Path, keep: str = RunLock.NAME) -> None:
    """Remove everything in ``folder`` except the lock file ``keep``."""
    _clear(folder, keep)


def _holder_text(lock: FolderLock) -> str:
    return describe(lock.holder() or {})


def _progress_every(cfg: Any) -> float | None:
    """The run's ``trainer.progress_every`` (None: the default), for every loop inside the run."""
    trainer = getattr(cfg, "trainer", None)
    return getattr(trainer, "progress_every", None) if trainer is not None else None


def _claim(lock: RunLock, job: Job) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Take the run's lease: ``(None, previous holder or None)`` when taken, else ``(busy / error result, None)``. A
    lease of an earlier attempt of this job (same ``owner``) is waited for until it is stale (its holder's expiry plus
    one heartbeat at most)."""
    rid, unheld, deadline = job.run.run_id, 0, None
    while True:
        previous = lock.holder()
        try:
            lock.acquire()
            return None, previous
        except MrlearnError as exc:
            info = lock.holder()
            if info is None:
                unheld += 1
                if unheld > 1:  # twice not held yet not taken: the folder cannot be written (read-only, disk full)
                    return {"status": "error", "run_id": rid, "message": f"study run {rid}: {exc}"}, None
                continue
            if not job.owner or info.get("owner") != job.owner or lease_state(info) != "live":
                return {"status": "busy", "run_id": rid, "message": f"being run by {describe(info)}; left to it"}, None
            if deadline is None:  # an earlier attempt of this very run (a lost worker or node): wait for its lease
                deadline = time.monotonic() + float(info.get("expires_after", 30)) + float(info.get("heartbeat_every", 10))
            elif time.monotonic() > deadline:
                return {"status": "busy", "run_id": rid,
                        "message": f"an earlier attempt still renews its lease ({describe(info)}); left to it"}, None
            time.sleep(0.5)


def _engine_lock_free(run_dir: Path, previous: dict[str, Any] | None) -> bool:
    """Whether no other live process holds the run folder's engine lease (``.lock``); a lease of the process whose
    study lease was just taken over as stale (a lost node renews both, the last beats a moment apart) is waited for
    until it is stale too."""
    if not is_locked_by_other(run_dir):
        return True
    info = FolderLock(run_dir).holder() or {}
    if not previous or (info.get("host"), info.get("pid")) != (previous.get("host"), previous.get("pid")):
        return False
    deadline = time.monotonic() + float(info.get("expires_after", 30)) + float(info.get("heartbeat_every", 10))
    while is_locked_by_other(run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    return not is_locked_by_other(run_dir)


def _failed(job: Job, exc: BaseException) -> dict[str, Any]:
    """The one-line ``error`` result of a run; the full traceback goes to ``error.log`` in its folder."""
    rid = job.run.run_id
    log = job.run_dir / "error.log"
    first = (str(exc).strip().splitlines() or [""])[0]
    text = first if isinstance(exc, (MrlearnError, RankError)) else f"{type(exc).__name__}: {first}"
    try:
        atomic_write_text(log, exc.log if isinstance(exc, RankError) else "".join(traceback.format_exception(exc)))
        where = f"; log: {log}"
    except MrlearnError:
        where = ""
    return {"status": "error", "run_id": rid, "message": f"study run {rid}: {text}{where}", "log": str(log)}


def run_job(job: Job) -> dict[str, Any]:
    """Run ``job`` if no one else does; returns ``{"status": finished|skipped|busy|error, ...}``.

    ``error`` carries one line (run id, the first line of the error, the path of ``error.log``); only a signal
    (:class:`~mrlearn.errors.RunInterrupted`) propagates.
    """
    run_dir = job.run_dir
    rid = job.run.run_id
    if is_finished(run_dir):
        return {"status": "skipped", "run_id": rid, "message": "finished before, skipped"}
    lock = RunLock(run_dir, what="study run", owner=job.owner)
    refused, previous = _claim(lock, job)
    if refused is not None:
        return refused
    try:
        if is_finished(run_dir):
            return {"status": "skipped", "run_id": rid, "message": "finished by another worker, skipped"}
        if not _engine_lock_free(run_dir, previous):
            return {"status": "busy", "run_id": rid,
                    "message": f"its folder is held by {_holder_text(FolderLock(run_dir))}; left to it"}
        try:
            cfg = job.config if job.config is not None else run_config(job.spec, job.run, run_dir)
            if job.after and getattr(job.runner, "continues_from_stop", False):
                seed_from_stop(Path(job.out), rid, cfg, keep=RunLock.NAME)
            resume, notes = prepare_folder(run_dir, cfg, job.runner, RunLock.NAME)
            if job.threads:
                import torch

                torch.set_num_threads(int(job.threads))
            start = time.time()
            label = f"[{job.index}/{job.total}] {rid}"
            if process_count(cfg) > 1:  # DDP: Lightning starts the ranks in a child process of its own
                outcome = run_ranks(job.runner, cfg, bool(resume), label, job.threads)
            else:
                with progress_context(label, _progress_every(cfg)):
                    outcome = job.runner(cfg, resume=True) if resume else job.runner(cfg)
            seconds = time.time() - start
            outcome.slices = label_subjects(cfg, outcome.slices)  # the files' patient_id: the unit of replication
            if resume:
                outcome.extra["resumed_from"] = resume
            (run_dir / "error.log").unlink(missing_ok=True)  # an earlier attempt's
            write_outcome(run_dir, job.run, outcome, seconds, config=dump_config(cfg))
        except RunInterrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - one run's error (or bug) never ends the others
            return _failed(job, exc)
        return {"status": "finished", "run_id": rid, "seconds": seconds, "groups": outcome.groups, "notes": notes,
                "pid": os.getpid(), "resumed_from": resume}
    finally:
        lock.release()
