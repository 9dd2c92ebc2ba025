"""Run-folder files: atomic writes, ``run.json`` (seed, versions, git revision, status) and ``metrics.json``.

Every file is written to ``<name>.tmp`` in the same folder, flushed, fsynced and moved into place with
``os.replace``, so a reader (or a killed run) never sees a half-written file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (tmp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_plain) + "\n")


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def git_revision() -> str | None:
    """The git commit of the mrlearn source tree (``+dirty`` when modified), or None outside a checkout."""
    src = Path(__file__).resolve().parents[3]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src, capture_output=True,
                               text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of Python, mrlearn and the main dependencies."""
    out = {"python": platform.python_version()}
    for name in ("mrlearn", "torch", "lightning", "numpy", "h5py", "scipy", "skimage"):
        try:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            pass
    return out


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunInfo:
    """``run.json``: seed, versions, git revision, command line, status (running / finished / failed)."""

    def __init__(self, run_dir: str | Path, seed: int, extra: dict[str, Any] | None = None):
        self.path = Path(run_dir) / "run.json"
        previous = {}
        if self.path.is_file():
            try:
                previous = json.loads(self.path.read_text())
            except (OSError, ValueError):
                previous = {}
        self.data: dict[str, Any] = {
            "seed": seed, "status": "running", "started": now(), "finished": None,
            "git_revision": git_revision(), "versions": versions(), "command": sys.argv,
            "attempts": int(previous.get("attempts", 0)) + 1, **(extra or {}),
        }

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        write_json(self.path, self.data)

    def running(self) -> None:
        self.update(status="running")

    def finished(self, **fields: Any) -> None:
        self.update(status="finished", finished=now(), error=None, **fields)

    def failed(self, error: str) -> None:
        self.update(status="failed", finished=now(), error=error)
