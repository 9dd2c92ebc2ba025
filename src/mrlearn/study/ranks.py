"""One study run on several processes (DDP): the study driver starts one child process, Lightning starts the ranks.

A run whose config asks for more than one process (``trainer.devices`` > 1: :func:`process_count`) is not called in
the study's own process (Lightning would start its other ranks by running the whole study command again). The
driver (:func:`mrlearn.study.execute.run_job`, which keeps the run lease, resumes or clears the folder and writes
``result.json``) calls :func:`run_ranks` instead:

* it writes the run's resolved config and a spec (the runner's registry name, ``resume``, the progress label, torch
  threads per rank) to a private temporary folder and starts ``python -m mrlearn.study.ranks_child SPEC`` in a
  session of its own, with no inherited rank variables and ``MRLEARN_LOCAL_RANKS=1`` (Lightning's own launcher,
  whatever cluster the study runs in: :func:`mrlearn.engine.cluster.cluster_plugins`);
* in that child, Lightning starts the other ranks (strategy ``ddp``: the same command line again, with
  ``LOCAL_RANK`` set); every rank calls the same runner (its scoring after training too), rank 0 writes the run
  folder as ``mrlearn train --devices N`` does, and rank 0 alone writes the runner's outcome (``outcome.json`` and
  ``examples.npz``), its error (``error.json``: one line and the traceback) or its interruption
  (``interrupted.json``) to the temporary folder; no rank touches the study's leases, ``study.csv`` or
  ``result.json``;
* the driver reads that back: an outcome becomes the study row, an error the usual one-line run failure (the
  child's traceback in ``error.log``), an interruption :class:`~mrlearn.errors.RunInterrupted`. When the child
  has ended, whatever is left of its process group (ranks still scoring, loader workers) is killed.

A signal to the driver while it waits (``RunInterrupted``, ``KeyboardInterrupt``) is passed on to the child's rank
0 (SIGTERM, or SIGINT for Ctrl-C): the ranks stop together at the next step boundary with a resumable checkpoint
(:mod:`mrlearn.engine.signals`); after :data:`STOP_SECONDS` the process group is killed. A child whose driver
died (``kill -9``) notices within a second and stops the same way. A rerun resumes the folder through
:mod:`mrlearn.study.resume` (the runner is called with ``resume=True`` in every rank).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from mrlearn.errors import MrlearnError, RunInterrupted, input_error

STOP_SECONDS = 120.0  #: how long a stopped child may take to write its checkpoint before its processes are killed
#: rank variables of a launcher the study may run under; never passed to the child (its ranks are its own)
RANK_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "ROLE_RANK",
            "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


def device_count(trainer: Any) -> int:
    """How many processes ``trainer.devices`` starts on one node (``auto`` / -1: every visible GPU on a GPU run)."""
    devices = getattr(trainer, "devices", 1)
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and "," in devices:  # GPU indices, e.g. "0,1"
        return len([d for d in devices.split(",") if d.strip()])
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if devices in ("auto", -1):
        if str(getattr(trainer, "accelerator", "auto")) in ("gpu", "cuda", "auto"):
            import torch

            return torch.cuda.device_count() if torch.cuda.is_available() else 1
        return 1
    return int(devices) if isinstance(devices, int) else 1


def process_count(cfg: Any) -> int:
    """The processes a run's config trains on: devices per node x ``trainer.num_nodes``."""
    trainer = getattr(cfg, "trainer", None)
    return device_count(trainer) * max(1, int(getattr(trainer, "num_nodes", 1) or 1))


class RankError(Exception):
    """A run that failed in its child process: ``line`` (one line, as the study prints it), ``log`` (the child's
    traceback, for ``error.log``)."""

    def __init__(self, line: str, log: str):
        super().__init__(line)
        self.line, self.log = line, log


# ---------------------------------------------------------------------------------------------- the study driver
def run_ranks(runner: Callable[..., Any], cfg: Any, resume: bool, label: str | None = None,
              threads: int | None = None) -> Any:
    """Run ``runner`` on ``cfg`` in a child process whose Lightning starts the ranks (module docstring); returns the
    runner's :class:`~mrlearn.study.results.RunOutcome` as rank 0 reported it. ``threads``: torch threads for the
    whole run (None: ``OMP_NUM_THREADS`` or this machine's cores), shared among its ranks (each rank's share is its
    ``OMP_NUM_THREADS``, which Lightning then leaves as it is)."""
    from mrlearn import registry
    from mrlearn.config import dump_config

    name = registry.name_of("runner", runner)
    if name is None:
        raise input_error("study: runner", f"{getattr(runner, '__name__', runner)!r} is not a registered runner, so "
                          "the processes of a multi-device run cannot call it", "register it with "
                          "mrlearn.study.register_runner in a module named in MRLEARN_PLUGINS or an entry point")
    n = process_count(cfg)
    per_rank = max(1, (threads or _omp_threads() or os.cpu_count() or 1) // n)
    with tempfile.TemporaryDirectory(prefix="mrlearn-ranks-") as tmp:
        folder = Path(tmp)
        (folder / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        every = getattr(getattr(cfg, "trainer", None), "progress_every", None)
        spec = {"runner": name, "module": getattr(runner, "__module__", None), "config": str(folder / "config.yaml"),
                "resume": bool(resume), "label": label, "progress_every": every,
                "threads": per_rank, "parent": os.getpid()}
        (folder / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        try:
            code = _wait(_start(folder / "spec.json", per_rank))
        except (RunInterrupted, KeyboardInterrupt):
            stopped = _stopped(folder)  # the child's own account: where it stopped, its checkpoint
            if stopped is None:
                raise
            raise stopped from None
        return _read_back(folder, code)


def _omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a count (its first level), None when unset or unreadable."""
    text = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _start(spec: Path, threads: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
    env.update(MRLEARN_LOCAL_RANKS="1", OMP_NUM_THREADS=str(threads))
    return subprocess.Popen([sys.executable, "-m", "mrlearn.study.ranks_child", str(spec)], env=env,
                            start_new_session=os.name == "posix")


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill what is left of the child's process group (its other ranks, data loader workers)."""
    if os.name == "posix":
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    elif proc.poll() is None:
        proc.kill()


def _wait(proc: subprocess.Popen) -> int:
    """The child's exit status; a signal to this process while waiting is passed on to it (module docstring)."""
    try:
        return proc.wait()
    except BaseException as exc:
        sig = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else getattr(exc, "signum", signal.SIGTERM)
        try:
            proc.send_signal(sig)
            proc.wait(timeout=STOP_SECONDS)
        except BaseException:  # noqa: BLE001 - a second signal or the timeout: stop at once
            pass
        raise
    finally:
        _kill_group(proc)
        proc.wait()


def _stopped(folder: Path) -> RunInterrupted | None:
    """The interruption rank 0 reported (None: none)."""
    from mrlearn.io import read_json

    info = read_json(folder / "interrupted.json")
    if info is None:
        return None
    return RunInterrupted(int(info["signum"]), str(info["where"]), info.get("checkpoint"),
                          str(info.get("resume") or "the same command again"))


def _read_back(folder: Path, code: int) -> Any:
    """The outcome rank 0 wrote, or the error / interruption it reported, or a one-line error for a child that
    ended without a word (killed)."""
    from mrlearn.io import read_json
    from mrlearn.study.results import RunOutcome

    stopped = _stopped(folder)
    if stopped is not None:
        raise stopped
    failed = read_json(folder / "error.json")
    if failed is not None:
        raise RankError(str(failed["line"]), str(failed.get("log", "")))
    data = read_json(folder / "outcome.json")
    if code != 0 or data is None:
        killed = code < 0 and -code in signal.valid_signals()
        how = f"signal {signal.Signals(-code).name}" if killed else f"status {code}"
        raise MrlearnError(f"its processes ended with {how} before reporting an outcome (killed, or out of memory?); "
                           "rerun the study to resume it from its last checkpoint")
    examples = {}
    if (folder / "examples.npz").is_file():
        import numpy as np

        with np.load(folder / "examples.npz", allow_pickle=False) as npz:
            for key in npz.files:
                group, _, kind = key.rpartition("/")
                examples.setdefault(group, {})[kind] = npz[key]
    return RunOutcome(groups=data["groups"], slices=data["slices"], examples=examples, extra=data["extra"])
