"""The run folder: one place for what every command that writes a run does.

Layout: ``config.yaml`` (the resolved config), ``run.json`` (seed, versions, git revision, command, status
``running`` / ``finished`` / ``failed`` / ``interrupted``, error), ``.lock`` while a process holds it, and whatever
the method writes (``metrics.json``, ``checkpoints/``, logs).

:class:`RunFolder` is a context manager: entering locks the folder (a second process gets a one-line error), refuses a
folder that already holds a run unless ``resume`` is set or that run failed (then it starts again:
:mod:`mrlearn.engine.restart`; ``run.json`` keeps the attempt count and ``restarted_after``), writes ``config.yaml``
and marks ``run.json`` running; leaving with an exception marks it failed (``interrupted`` for
KeyboardInterrupt/SystemExit/RunInterrupted) with a one-line reason, and always releases the lock. A NaN/Inf stop
(:class:`~mrlearn.errors.NonFiniteError`) leaves with its message completed by what remains in ``checkpoints/``
(:func:`describe_checkpoints`), so it never claims a checkpoint that does not exist.

A resume (``resume=True``) must ask for the run the folder holds: a config that differs from its ``config.yaml`` in
anything but :data:`RESUMABLE_CHANGES` (longer budgets, logging, loader workers) is refused before any file is
touched (:func:`config_changes`), so the run stays resumable.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from mrlearn.errors import NonFiniteError, RunInterrupted, input_error
from mrlearn.io import FolderLock, atomic_write_text, read_json, write_json

__all__ = ["COSMETIC_CHANGES", "RESUMABLE_CHANGES", "RunFolder", "config_changes", "describe_checkpoints"]

#: config keys a resume may change: budgets (continue a run for longer), logging, data-loader workers and cache
RESUMABLE_CHANGES = frozenset({"trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.progress_bar",
                               "trainer.progress_every", "trainer.log_every_n_steps", "data.num_workers",
                               "data.cache_mb", "out_dir"})


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


#: config keys that do not change what a run computes (a finished run with other values is the same run)
COSMETIC_CHANGES = frozenset({"trainer.progress_bar", "trainer.progress_every", "trainer.log_every_n_steps",
                              "data.num_workers", "data.cache_mb", "out_dir"})


def config_changes(old_text: str, new_text: str, ignore: frozenset[str] = RESUMABLE_CHANGES) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for every key of both resolved configs (YAML text) whose value differs, outside
    ``ignore``; keys only one side has (options added or retired between versions) are left out."""
    import yaml

    old, new = _flatten(yaml.safe_load(old_text) or {}), _flatten(yaml.safe_load(new_text) or {})
    return [(k, old[k], new[k]) for k in new if k in old and old[k] != new[k] and k not in ignore]

#: files whose presence means a folder already holds a run
RUN_MARKERS = ("run.json", "checkpoints/last.ckpt", "metrics.json")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_revision() -> str | None:
    """The git commit of the mrlearn source tree (``+dirty`` when modified), or None outside a checkout."""
    src = Path(__file__).resolve().parents[3]
    if not (src / ".git").exists():
        return None
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of Python, mrlearn and the main dependencies that are already imported or importable."""
    out = {"python": platform.python_version()}
    for name in ("mrlearn", "torch", "lightning", "numpy", "h5py", "scipy", "skimage"):
        try:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            pass
    return out


def describe_checkpoints(folder: str | Path) -> str:
    """What a stopped run leaves in ``folder`` (a ``checkpoints/`` folder), said truthfully: which of ``last.ckpt`` /
    ``best.ckpt`` exist and at which step, or that none was written."""
    folder = Path(folder)
    found = []
    for name in ("last.ckpt", "best.ckpt"):
        path = folder / name
        if path.is_file():
            try:
                import torch

                step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", "?")
            except Exception:  # noqa: BLE001 - an unreadable file is reported as such
                step = "unreadable"
            found.append(f"{path} (step {step})")
    if not found:
        return "no checkpoint was written"
    return "finite checkpoints kept: " + ", ".join(found)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


class RunFolder:
    """Context manager over one run folder (see the module docstring).

    ``config_text``: the resolved config (YAML) written as ``config.yaml``; ``resume``: continue a run already in the
    folder (its ``run.json`` attempts counter goes up); ``rank``: only rank 0 writes (DDP), every rank holds no lock.
    """

    def __init__(self, path: str | Path, config_text: str | None, seed: int | None, resume: bool = False,
                 extra: dict[str, Any] | None = None, rank: int = 0):
        self.path = Path(path)
        self.config_text = config_text
        self.seed = seed
        self.resume = resume
        self.extra = dict(extra or {})
        self.rank = rank
        self.lock = FolderLock(self.path)
        self.data: dict[str, Any] = {}

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def holds_run(self) -> bool:
        return any((self.path / m).exists() for m in RUN_MARKERS)

    def __enter__(self) -> "RunFolder":
        if not self.writer:
            return self
        self.lock.acquire()
        try:
            previous = read_json(self.path / "run.json") or {}
            restarted = None
            if not self.resume and self.holds_run():
                if previous.get("status") != "failed":  # finished, running or interrupted runs are kept
                    raise input_error(self.path, f"already holds a run (status {previous.get('status', 'unknown')})",
                                      "pass --resume to continue it, or choose another --out")
                from mrlearn.engine.restart import restart_failed

                print(f"mrlearn: {restart_failed(self.path, previous, self.lock.path.name)}", file=sys.stderr, flush=True)
                restarted = previous.get("error") or "failed"
            self._check_resume_config()
            self.data = {"seed": self.seed, "status": "running", "started": now(), "finished": None,
                         "git_revision": git_revision(), "versions": versions(), "command": sys.argv,
                         "pid": os.getpid(), "attempts": int(previous.get("attempts", 0)) + 1, **self.extra}
            if restarted is not None:
                self.data["restarted_after"] = restarted  # the previous attempt's error
            if self.config_text is not None:
                atomic_write_text(self.path / "config.yaml", self.config_text)
            self.update()
        except BaseException:
            self.lock.release()
            raise
        return self

    def _check_resume_config(self) -> None:
        old_path = self.path / "config.yaml"
        if not (self.resume and self.config_text is not None and old_path.is_file()):
            return
        changes = config_changes(old_path.read_text(encoding="utf-8"), self.config_text)
        if changes:
            key, old, new = changes[0]
            more = f" and {len(changes) - 1} more" if len(changes) > 1 else ""
            raise input_error(self.path, f"--resume asks for another run than the folder holds ({key}: {old!r} -> "
                              f"{new!r}{more}); nothing changed",
                              "resume without --config/--set to continue it, or train the new setting with another --out")

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into ``run.json`` and write it (rank 0 only)."""
        if self.writer:
            self.data.update(fields)
            write_json(self.path / "run.json", self.data)

    def finished(self, **fields: Any) -> None:
        self.update(status="finished", finished=now(), error=None, **fields)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if not self.writer:
            return
        note = None
        if isinstance(exc, NonFiniteError) and not exc.checkpoints_noted:
            note = type(exc)(f"{exc}; {describe_checkpoints(self.path / 'checkpoints')}")
            note.checkpoints_noted = True
            exc = note
        try:
            if exc is not None and self.data.get("status") == "running":
                interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit, RunInterrupted))
                try:
                    self.update(status="interrupted" if interrupted else "failed", finished=now(), error=one_line(exc))
                except Exception:  # e.g. disk full: the original error is the one to report
                    pass
        finally:
            self.lock.release()
        if note is not None:
            raise note from None
