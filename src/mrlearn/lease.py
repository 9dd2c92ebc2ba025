"""Folder leases: one live process at a time holds a folder, on one machine or across a cluster.

A lease is the file ``folder/<NAME>`` (``.lock`` by default), created with ``O_EXCL``. It holds JSON::

    {"pid": 1234, "host": "gpu-node-07", "started": "2026-01-01T10:00:00", "command": "...",
     "token": "<random id of this lease>", "owner": "<id of the study that asked for it, or null>",
     "heartbeat": 1767261600.0, "heartbeat_every": 10.0, "expires_after": 30.0}

While held, a daemon thread rewrites ``heartbeat`` (seconds since the epoch, the holder's clock) every
``heartbeat_every`` seconds. A lease is **stale** when

* its host is this host and its process is gone (the fast path: no waiting), or
* its heartbeat is older than its ``expires_after`` (any host: a killed worker, a dead node, a cut-off machine).

A stale lease is taken over with a message on stderr; a live lease is respected (a one-line error names its holder).
A lease file without a heartbeat (written by an earlier mrlearn) from another host is never judged stale.
Hosts that share a folder must have clocks that agree to well within ``expires_after`` (NTP).

Settings: ``MRLEARN_LEASE_HEARTBEAT`` (seconds between heartbeats, default 10) and ``MRLEARN_LEASE_EXPIRY``
(seconds without a heartbeat after which a lease is stale, default 3 x the heartbeat); the holder writes both into
its lease, so every reader judges a lease by its holder's own settings.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from mrlearn.errors import input_error

DEFAULT_HEARTBEAT = 10.0


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise input_error(name, f"{text!r} is not a positive number of seconds", f"e.g. {name}={default:g}")
    return value


def lease_settings() -> tuple[float, float]:
    """``(heartbeat_every, expires_after)`` in seconds from the environment (module docstring)."""
    every = _env_seconds("MRLEARN_LEASE_HEARTBEAT", DEFAULT_HEARTBEAT)
    expiry = _env_seconds("MRLEARN_LEASE_EXPIRY", 3 * every)
    if expiry <= every:
        raise input_error("MRLEARN_LEASE_EXPIRY", f"{expiry:g} s is not longer than the heartbeat ({every:g} s)",
                          "use about 3 x MRLEARN_LEASE_HEARTBEAT")
    return every, expiry


def lease_age(info: dict[str, Any]) -> float | None:
    """Seconds since the lease's last heartbeat (None: the lease has no heartbeat)."""
    beat = info.get("heartbeat")
    return time.time() - float(beat) if isinstance(beat, (int, float)) else None


def lease_state(info: dict[str, Any]) -> str:
    """``mine`` (this process), ``dead`` (same host, process gone), ``expired``, or ``live``."""
    here = socket.gethostname()
    if info.get("host") == here and info.get("pid") == os.getpid():
        return "mine"
    if info.get("host") == here and not pid_alive(int(info.get("pid", -1))):
        return "dead"
    age = lease_age(info)
    expiry = info.get("expires_after")
    if age is not None and age > float(expiry if isinstance(expiry, (int, float)) else lease_settings()[1]):
        return "expired"
    return "live"


def describe(info: dict[str, Any]) -> str:
    """``process P on HOST (since S, heartbeat A s ago)`` for messages."""
    age = lease_age(info)
    beat = f", heartbeat {age:.0f} s ago" if age is not None else ""
    return f"process {info.get('pid', '?')} on {info.get('host', '?')} (since {info.get('started', '?')}{beat})"


class FolderLock:
    """An exclusive lease on ``folder`` (file ``folder/<NAME>``), held by this process until :meth:`release`.

    ``acquire`` creates the lease and starts its heartbeat; a stale lease (module docstring) is taken over with a
    message, a live one is a one-line error naming its holder. Re-acquiring a lease this process holds is allowed
    (nested use). ``owner``: an id written into the lease (a study's id: its executors recognise an earlier attempt
    of their own run).
    """

    NAME = ".lock"

    def __init__(self, folder: str | Path, what: str = "run", owner: str | None = None):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self.what = what
        self.owner = owner
        self.held = False
        self.lost = False
        self._token = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict[str, Any] | None:
        """The lease's content, or None when the folder is not held (unreadable content: pid -1, host ``?``)."""
        from mrlearn.io import read_json

        if not self.path.exists():
            return None
        return read_json(self.path) or {"pid": -1, "host": "?", "started": "?"}

    def _stale(self, info: dict[str, Any]) -> bool:
        return lease_state(info) in ("dead", "expired")

    def acquire(self) -> "FolderLock":
        from mrlearn.io import _remove, _write_error

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_error(self.folder, exc) from None
        every, expiry = lease_settings()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.holder()
                if info is None:
                    continue
                state = lease_state(info)
                if state == "mine":
                    self.held = True
                    return self
                if state in ("dead", "expired"):
                    why = "no longer running" if state == "dead" else f"no heartbeat for {lease_age(info):.0f} s"
                    print(f"mrlearn: {self.folder}: taking over a stale lease of {describe(info)}: {why}",
                          file=sys.stderr, flush=True)
                    if self.holder() == info:  # not renewed nor taken over by someone else meanwhile
                        _remove(self.path)
                    continue
                raise input_error(self.folder, f"in use by {describe(info)}",
                                  f"wait for it to finish, choose another folder, or delete {self.path} if that "
                                  "process is gone")
            except OSError as exc:
                raise _write_error(self.folder, exc) from None
            self._token = uuid.uuid4().hex
            with os.fdopen(fd, "w") as fh:
                json.dump(self._content(every, expiry), fh)
            self.held, self.lost = True, False
            self._start_heartbeat(every)
            return self
        raise input_error(self.folder, "could not take the folder lock", f"delete {self.path} and retry")

    def _content(self, every: float, expiry: float) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "command": " ".join(sys.argv)[:500], "token": self._token, "owner": self.owner,
                "heartbeat": time.time(), "heartbeat_every": every, "expires_after": expiry}

    def _start_heartbeat(self, every: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(every,), daemon=True,
                                        name=f"mrlearn-lease-{self.folder.name}")
        self._thread.start()

    def _beat(self, every: float) -> None:
        from mrlearn.io import write_json

        while not self._stop.wait(every):
            info = self.holder()
            if info is None or info.get("token") != self._token:  # taken over after a missed expiry: stop quietly
                self.lost = True
                print(f"mrlearn: {self.folder}: lease lost (taken over by {describe(info or {})})", file=sys.stderr)
                return
            try:
                write_json(self.path, {**info, "heartbeat": time.time()})
            except Exception:  # noqa: BLE001 - a missed beat (full disk, NFS hiccup) is retried next time
                pass

    def release(self) -> None:
        from mrlearn.io import _remove

        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
        if self.held:
            info = self.holder()
            if info is not None and info.get("pid") == os.getpid() and info.get("token", self._token) == self._token:
                _remove(self.path)
            self.held = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def is_locked_by_other(folder: str | Path) -> bool:
    """Whether ``folder`` holds a live lease (``.lock``) of another process (a folder that must not be touched)."""
    info = FolderLock(folder).holder()
    return info is not None and lease_state(info) == "live"
