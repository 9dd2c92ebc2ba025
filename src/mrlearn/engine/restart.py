"""Starting a failed run again in its own folder (``mrlearn train`` without ``--resume``, same ``--out``).

A run whose ``run.json`` says ``failed`` (a wrong data root, a bad option found at start, a NaN stop) is not
worth protecting the way a finished, running or interrupted one is: the corrected command simply starts it again.
What the failed attempt left is never mixed into the new one: when it wrote no checkpoint (nothing trained to
keep) its files are removed; when it did, the whole attempt moves to ``failed_attempt_<n>/`` inside the folder,
so its weights stay available. The lock file and earlier ``failed_attempt_*`` folders stay where they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

KEEP_PREFIX = "failed_attempt_"


def _previous_files(folder: Path, lock_name: str) -> list[Path]:
    return [p for p in folder.iterdir() if p.name != lock_name and not p.name.startswith(KEEP_PREFIX)]


def restart_failed(folder: str | Path, previous: dict[str, Any], lock_name: str = ".lock") -> str:
    """Make ``folder`` (holding a failed run whose ``run.json`` is ``previous``) ready for a fresh start; returns
    the one-line note to print."""
    folder = Path(folder)
    items = _previous_files(folder, lock_name)
    error = previous.get("error") or "no reason recorded"
    trained = any(p.is_file() for item in items if item.is_dir() for p in item.rglob("*.ckpt")) or \
        any(p.suffix == ".ckpt" for p in items if p.is_file())
    if trained:
        n = int(previous.get("attempts", 1) or 1)
        while (folder / f"{KEEP_PREFIX}{n}").exists():
            n += 1
        keep = folder / f"{KEEP_PREFIX}{n}"
        keep.mkdir()
        for item in items:
            item.rename(keep / item.name)
        where = f"its files, checkpoints included, are kept in {keep}/"
    else:
        for item in items:
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
        where = "it wrote no checkpoint, so its files were removed"
    return f"{folder}: the run there had failed ({error}); starting it again ({where})"
