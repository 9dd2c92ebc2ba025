"""Executors: how a study's runs are spread over processes and machines.

All three run the same function, :func:`mrlearn.study.execute.run_job`, on the same :class:`Job` objects, and report
each result to ``on_done(job, result)`` as it arrives; the study folder's leases make sharing it safe.

* ``sequential``: one run after another in this process (the default).
* ``local``: ``workers`` runs at once on this machine, each in a fresh spawned process (a clean state per run) with
  ``cpus`` torch threads (default: the machine's cores divided among the workers). A run whose process dies
  (killed, out of memory) is started again in a new process, up to :data:`RETRIES` times, and resumes from its
  last checkpoint; the other runs are not touched.
* ``ray``: each run a Ray task, retried by Ray when its worker or node is lost (:mod:`mrlearn.study.ray_executor`).

A run that fails is reported in one line (``status: error``: run id, first line of the error, its log) and the
other runs go on - those in flight and those not started yet; the caller ends the study with a summary of the
failed runs. A signal (``RunInterrupted``) ends the study; a rerun resumes the unfinished runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

from mrlearn.errors import MrlearnError, input_error
from mrlearn.study.execute import Job, next_ready, run_job
from mrlearn.study.ray_executor import RETRIES, ray_module, run_ray

EXECUTORS = ("sequential", "local", "ray")
OnDone = Callable[[Job, dict[str, Any]], None]


def run_sequential(jobs: Sequence[Job], on_done: OnDone, on_start: Callable[[Job], None] | None = None) -> None:
    """Run the jobs one after another in this process (``on_start(job)`` before each)."""
    for job in jobs:
        if on_start is not None:
            on_start(job)
        on_done(job, run_job(job))


def default_threads(workers: int) -> int:
    """Torch threads per run when ``workers`` runs share this machine."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _crashed(job: Job, tries: int, exc: BaseException) -> dict[str, Any]:
    rid = job.run.run_id
    return {"status": "error", "run_id": rid,
            "message": f"study run {rid}: its worker process died {tries} times ({type(exc).__name__}); "
                       f"log: {job.run_dir} (run.json, checkpoints)"}


def run_local(jobs: Sequence[Job], on_done: OnDone, workers: int) -> None:
    """Run up to ``workers`` jobs at once, each in its own spawned process (a one-process pool per job, so a dying
    process breaks only its own job, which is retried up to :data:`RETRIES` times)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    pending = [(job, 1) for job in jobs]
    running: dict[Any, tuple[Job, int, ProcessPoolExecutor]] = {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                ready = next_ready([j for j, _ in pending], [j for j, _, _ in running.values()])
                if ready is None:
                    break
                job, tries = pending.pop(ready)
                pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
                running[pool.submit(run_job, job)] = (job, tries, pool)
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                job, tries, pool = running.pop(future)
                pool.shutdown(wait=True)
                try:
                    result = future.result()  # a signal in the worker (RunInterrupted) is re-raised here
                except BrokenProcessPool as exc:
                    if tries <= RETRIES:
                        print(f"mrlearn: [{job.index}/{job.total}] {job.run.run_id}: its worker process died; "
                              f"retry {tries} of {RETRIES} (resumes from its last checkpoint)", file=sys.stderr, flush=True)
                        pending.insert(0, (job, tries + 1))
                        continue
                    result = _crashed(job, tries, exc)
                on_done(job, result)
    finally:
        for future, (_, _, pool) in running.items():
            future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)


def execute(jobs: Sequence[Job], on_done: OnDone, executor: str = "sequential", workers: int | None = None,
            address: str | None = None, on_start: Callable[[Job], None] | None = None) -> None:
    """Run ``jobs`` with the named executor (see the module docstring); ``on_start`` only for ``sequential``."""
    if executor not in EXECUTORS:
        raise input_error("--executor", f"unknown executor {executor!r}", f"choose one of: {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise input_error("--workers", f"{workers} is not a positive number of workers", "use e.g. --workers 2")
    if address and executor != "ray":
        raise input_error("--address", "only the ray executor joins a cluster", "add --executor ray")
    if executor == "sequential":
        run_sequential(jobs, on_done, on_start)
    elif executor == "local":
        run_local(jobs, on_done, workers or 2)
    else:
        run_ray(jobs, on_done, address, workers)


def check_executor(executor: str) -> None:
    """Fail early (before any run) when the executor cannot work here (Ray missing)."""
    if executor == "ray":
        ray_module()
    elif executor not in EXECUTORS:
        raise MrlearnError(f"--executor: unknown executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
