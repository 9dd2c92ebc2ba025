"""The ``ray`` executor: every study run a Ray task, retried by Ray when its worker or node dies.

Each run is a task with the resources it declares (``num_cpus``, ``num_gpus``; fractional GPUs share a device) and
``max_retries`` = :data:`RETRIES`: Ray resubmits the task when its worker process dies (killed, out of memory) or
its node is lost, and when the run stopped on a signal (``retry_exceptions``: ``RunInterrupted``, e.g. a node being
drained), after ``RAY_task_retry_delay_ms`` (default here :data:`RETRY_DELAY_MS`). The retried task waits for the
lease of the lost attempt (same host: at once; another host: until its heartbeat expires) and resumes the run from
its last checkpoint (:mod:`mrlearn.study.resume`). A run that still fails is reported in one line; the others go on.

Connecting: without ``address`` (and without ``RAY_ADDRESS``) a fresh local instance is started (``address="local"``:
a stale ``/tmp/ray/ray_current_cluster`` of a dead ``ray start`` is never joined) with ``workers`` CPUs and shut
down at the end. With ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:10001``) the head is first probed over TCP
(a few seconds), then joined (Ray tries for ``RAY_gcs_server_port_wait_time_s``, default here
:data:`JOIN_SECONDS`); a refused connection names token authentication (``RAY_AUTH_MODE=token`` and the
head's token in ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``) and ``ray status`` on the head. The study folder must be
on a file system every node sees, and mrlearn installed on every node. Ray is optional: ``pip install "mrlearn[ray]"``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from typing import Any, Callable, Iterator, Sequence

from mrlearn.errors import RunInterrupted, input_error
from mrlearn.study.execute import Job, next_ready, run_job

RETRIES = 3  #: task retries after a lost worker/node or a signal
RETRY_DELAY_MS = 1000  #: Ray's delay before a retry (``RAY_task_retry_delay_ms``; the environment's value wins)
PROBE_SECONDS = 5.0  #: TCP probe of a cluster address
JOIN_SECONDS = 10  #: Ray's attempts to join a head that answers (``RAY_gcs_server_port_wait_time_s``; the environment wins)
AUTH_DOCS = "https://docs.ray.io/en/latest/ray-security/token-auth.html"
OnDone = Callable[[Job, dict[str, Any]], None]


def ray_module():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise input_error("--executor ray", "Ray is not installed", 'install it with: pip install "mrlearn[ray]"') from None
    return ray


def _cluster_file() -> str:
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return os.path.join(base or "/tmp", "ray", "ray_current_cluster")


def host_port(address: str, where: str) -> tuple[str, int]:
    """``(host, port)`` that ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``) points at."""
    target = address
    if address == "auto":
        path = _cluster_file()
        try:
            with open(path, encoding="utf-8") as fh:
                target = fh.read().strip()
        except OSError:
            raise input_error(where, f"auto: no Ray cluster was started on this machine ({path} is missing)",
                              "start one with `ray start --head`, give the head's HOST:PORT, or leave out --address "
                              "for a local instance") from None
    text = target.split("://", 1)[-1]
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise input_error(where, f"{address!r} is not HOST:PORT", "e.g. --address 10.0.0.5:6379 or ray://10.0.0.5:10001")
    return host.strip("[]"), int(port)


def probe(address: str, where: str, seconds: float = PROBE_SECONDS) -> None:
    """A one-line error unless something accepts TCP connections at ``address`` within ``seconds``."""
    host, port = host_port(address, where)
    try:
        with socket.create_connection((host, port), timeout=seconds):
            return
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
    stale = f" ({_cluster_file()} names a cluster that is gone: `ray stop` clears it)" if address == "auto" else ""
    raise input_error(where, f"no Ray cluster answers at {host}:{port} ({reason}){stale}",
                      "check `ray status` on the head node and the address (GCS port, default 6379; ray://HOST:10001 "
                      "for Ray Client) and firewall, or leave out --address for a local instance")


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Send this process's file descriptor 2 to a temporary file while inside; its text in the yielded list."""
    sys.stderr.flush()
    saved = os.dup(2)
    text: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield text
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.append(tmp.read().decode("utf-8", "replace"))


def connect(ray: Any, address: str | None, workers: int | None) -> bool:
    """``ray.init`` for the study (module docstring); returns whether a local instance was started here."""
    os.environ.setdefault("RAY_task_retry_delay_ms", str(RETRY_DELAY_MS))
    target = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning", "log_to_driver": True}
    if target is None:
        kwargs["address"] = "local"
        if workers:
            kwargs["num_cpus"] = int(workers)
        try:
            ray.init(**kwargs)
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; each is one line for the user
            raise input_error("--executor ray", f"cannot start a local Ray instance ({_first(exc)})",
                              "check `ray status`, free memory and /tmp space, or use --executor local") from None
        return True
    where = "--address" if address else "RAY_ADDRESS"
    where = f"{where} {target}"
    probe(target, where)
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(JOIN_SECONDS))  # the port answered: Ray's 20 s is long
    try:
        with captured_stderr() as said:
            ray.init(address=target, **kwargs)
    except Exception as exc:  # noqa: BLE001
        log = "".join(said)
        if "InvalidAuthToken" in log or "Unauthenticated" in log or type(exc).__name__ == "AuthenticationError":
            raise input_error(where, "the Ray cluster refused this driver's authentication token",
                              "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the head's token (`ray get-auth-token` "
                              f"on the head) or copy it to ~/.ray/auth_token; see {AUTH_DOCS}") from None
        raise input_error(where, f"the port answers but no Ray cluster could be joined there ({_first(exc)})",
                          "check `ray status` on the head node, that this machine runs the same Ray and Python "
                          f"versions, and, with token authentication, RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                          f"({AUTH_DOCS})") from None
    sys.stderr.write("".join(said))
    return False


def _first(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _capacity(ray: Any) -> str:
    """``N node(s), C CPUs, G GPUs`` of the connected instance."""
    try:
        total = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    except Exception:  # noqa: BLE001 - only for a message
        return "capacity unknown"
    return f"{nodes} node(s), {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs"


def _task_options(job: Job) -> dict[str, Any]:
    opts: dict[str, Any] = {"num_cpus": job.resources.get("cpus", 1.0), "num_gpus": job.resources.get("gpus", 0.0),
                            "max_retries": RETRIES, "retry_exceptions": [RunInterrupted]}
    env = {k: v for k, v in os.environ.items() if k.startswith("MRLEARN_LEASE_")}
    if env:
        opts["runtime_env"] = {"env_vars": env}
    return opts


def _lost(ray: Any, job: Job, exc: BaseException) -> dict[str, Any]:
    """The one-line ``error`` result of a task Ray gave up on (worker/node lost or a signal, ``RETRIES`` + 1 times)."""
    rid = job.run.run_id
    cause = exc
    if isinstance(exc, ray.exceptions.RayTaskError) and hasattr(exc, "as_instanceof_cause"):
        cause = exc.as_instanceof_cause()
    what = _first(cause).split(" (pid=")[0]
    if isinstance(cause, RunInterrupted):
        what = f"interrupted by a signal {RETRIES + 1} times ({cause.where})"
    elif isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                          ray.exceptions.OutOfMemoryError)):
        what = f"its worker or node was lost {RETRIES + 1} times ({what})"
    return {"status": "error", "run_id": rid,
            "message": f"study run {rid}: {what}; log: {job.run_dir} (run.json, checkpoints) and the Ray worker logs "
                       "(ray logs, /tmp/ray/session_latest/logs)"}


def run_ray(jobs: Sequence[Job], on_done: OnDone, address: str | None = None, workers: int | None = None) -> None:
    """Submit every job as a Ray task (module docstring); report each result to ``on_done`` as it arrives."""
    ray = ray_module()
    joined_here = not ray.is_initialized()
    if joined_here:
        local = connect(ray, address, workers)
        where = "started a local instance" if local else f"joined the cluster at {address or os.environ.get('RAY_ADDRESS')}"
        print(f"mrlearn: ray: {where} ({_capacity(ray)})", file=sys.stderr, flush=True)
    try:
        remote = ray.remote(run_job)
        pending: list[Job] = list(jobs)
        refs: dict[Any, Job] = {}
        while pending or refs:
            while (ready := next_ready(pending, list(refs.values()))) is not None:  # a check after its run
                job = pending.pop(ready)
                refs[remote.options(**_task_options(job)).remote(job)] = job
            done, _ = ray.wait(list(refs), num_returns=1)
            job = refs.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                result = _lost(ray, job, exc)
            on_done(job, result)
    finally:
        if joined_here:  # a local instance stops; a cluster goes on without this driver
            ray.shutdown()
