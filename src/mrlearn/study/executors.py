"""Executors: how a study's runs are spread over processes and machines.

All three run the same function, :func:`mrlearn.study.execute.run_job`, on the same :class:`Job` objects, and report
each result to ``on_done(job, result)`` as it arrives; the study folder's locks make sharing it safe.

* ``sequential``: one run after another in this process (the default).
* ``local``: ``workers`` runs at once in worker processes on this machine (spawned, one fresh process per run so
  every run starts from a clean state); each gets ``cpus`` torch threads (default: the machine's cores divided
  among the workers).
* ``ray``: each run is a Ray task with the resources it declares (``num_cpus``, ``num_gpus``; fractional GPUs
  share a device), on a local Ray instance or an existing cluster (``address``: ``auto``, ``HOST:PORT`` or
  ``ray://HOST:10001``). The study folder must be on a file system every node sees, and mrlearn installed on
  every node. Ray is optional: ``pip install "mrlearn[ray]"``.

The first run that fails with a user error stops the study: nothing new starts, runs in flight finish, then the
error is raised. A bug (any other exception) is re-raised as it is.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

from mrlearn.errors import MrlearnError, input_error
from mrlearn.study.execute import Job, run_job

EXECUTORS = ("sequential", "local", "ray")
OnDone = Callable[[Job, dict[str, Any]], None]


def _stop_on(result: dict[str, Any]) -> bool:
    return result.get("status") == "error"


def run_sequential(jobs: Sequence[Job], on_done: OnDone, on_start: Callable[[Job], None] | None = None) -> None:
    """Run the jobs one after another in this process (``on_start(job)`` before each)."""
    for job in jobs:
        if on_start is not None:
            on_start(job)
        result = run_job(job)
        on_done(job, result)
        if _stop_on(result):
            return


def default_threads(workers: int) -> int:
    """Torch threads per run when ``workers`` runs share this machine."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_local(jobs: Sequence[Job], on_done: OnDone, workers: int) -> None:
    """Run up to ``workers`` jobs at once in spawned worker processes (one fresh process per job)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}  # a clean process per run
    pending = list(jobs)
    running: dict[Any, Job] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, **fresh) as pool:
        stop = False
        try:
            while pending or running:
                while pending and not stop and len(running) < workers:
                    job = pending.pop(0)
                    running[pool.submit(run_job, job)] = job
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    result = future.result()  # a bug in a worker is re-raised here
                    on_done(job, result)
                    stop = stop or _stop_on(result)
        except BaseException:
            for future in running:
                future.cancel()
            raise


def _ray():
    try:
        import ray
    except ImportError:
        raise input_error("--executor ray", "Ray is not installed", 'install it with: pip install "mrlearn[ray]"') from None
    return ray


def run_ray(jobs: Sequence[Job], on_done: OnDone, address: str | None = None, workers: int | None = None) -> None:
    """Submit every job as a Ray task with its declared resources; collect results as they finish.

    Without ``address`` a local Ray instance is started with ``workers`` CPUs (default: all cores) and shut down
    at the end; with ``address`` the study joins that cluster (and leaves it running).
    """
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning", "log_to_driver": True}
        if address:
            kwargs["address"] = address
        elif workers:
            kwargs["num_cpus"] = int(workers)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"--address {address}" if address else "--executor ray"
            raise input_error(where, f"cannot start or reach Ray ({str(exc).splitlines()[0]})",
                              "check the address (ray status on the head node) or run without --address") from None
    try:
        remote = ray.remote(run_job)
        refs: dict[Any, Job] = {}
        for job in jobs:
            opts = {"num_cpus": job.resources.get("cpus", 1.0), "num_gpus": job.resources.get("gpus", 0.0),
                    "max_retries": 0}
            refs[remote.options(**opts).remote(job)] = job
        stop = False
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            job = refs.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.TaskCancelledError:
                continue  # cancelled after an earlier run's error
            except ray.exceptions.RayTaskError as exc:
                for ref in refs:
                    ray.cancel(ref)
                cause = exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
                raise cause from None
            on_done(job, result)
            if _stop_on(result) and not stop:
                stop = True
                for ref in refs:  # runs not started yet are cancelled; runs in flight finish
                    ray.cancel(ref)
    finally:
        if started_here and not address:
            ray.shutdown()


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
        _ray()
    elif executor not in EXECUTORS:
        raise MrlearnError(f"--executor: unknown executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
