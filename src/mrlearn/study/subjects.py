"""Which subject a scored file belongs to: the file's ``patient_id`` attribute, else the file itself.

The study statistics (``study.stats``) treat subjects, not files, as the unit of replication: two contrasts of one
subject scored in one group are one subject. Runners report slices by file name (``fname``, the base name); after a
run, :func:`label_subjects` finds those files in the data folders the run's config names (``data.root`` - or the
embedded dataset when it is already built - and each ``tasks`` entry's ``root``; in a folder's split sub-folders,
the ``data.test`` folder first) and writes the ``patient_id`` of each found file into the rows' ``subject``. A file
not found, unreadable or without a ``patient_id`` keeps an empty ``subject`` (read back as its file name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from mrlearn.errors import MrlearnError

H5_SUFFIXES = (".h5", ".hdf5")


def _roots(cfg: Any) -> list[Path]:
    """Data roots named by ``cfg`` (never builds a dataset: the embedded one only when already on disk)."""
    data = getattr(cfg, "data", None)
    roots: list[Path] = []
    root = getattr(data, "root", None)
    if root:
        roots.append(Path(str(root)).expanduser())
    else:
        try:
            from mrlearn.config import embedded_options
            from mrlearn.data.simulate.build import is_cached
            from mrlearn.data.simulate.options import default_cache_dir

            options = embedded_options(data)
            if is_cached(default_cache_dir(options), options):
                roots.append(default_cache_dir(options))
        except (ImportError, OSError, ValueError, TypeError, MrlearnError):
            pass
    tasks = (getattr(cfg, "extra", None) or {}).get("tasks")
    for task in (tasks.get("tasks") if isinstance(tasks, dict) else None) or []:
        if isinstance(task, dict) and task.get("root"):
            roots.append(Path(str(task["root"])).expanduser())
    return roots


def _folders(cfg: Any, roots: list[Path]) -> list[Path]:
    """Each root's test folder, its other sub-folders, then the root itself (existing folders only)."""
    data = getattr(cfg, "data", None)
    first = [str(getattr(data, k)) for k in ("test", "val", "train") if getattr(data, k, None)]
    out: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        subs = sorted(p for p in root.iterdir() if p.is_dir())
        ordered = [root / name for name in first if (root / name).is_dir()] + subs + [root]
        out.extend(p for p in ordered if p not in out)
    return out


def patient_id(path: Path) -> str:
    """The ``patient_id`` attribute of an HDF5 volume ("" when absent or unreadable)."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            value = f.attrs.get("patient_id", "")
    except (OSError, ValueError, KeyError):
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value or "").strip()


def subject_ids(cfg: Any, fnames: Iterable[str]) -> dict[str, str]:
    """``fname -> patient_id`` of the files found in ``cfg``'s data folders (files not found are left out)."""
    wanted = sorted({str(f) for f in fnames if str(f).lower().endswith(H5_SUFFIXES)})
    if not wanted:
        return {}
    folders = _folders(cfg, _roots(cfg))
    found: dict[str, str] = {}
    for name in wanted:
        for folder in folders:
            path = folder / name
            if path.is_file():
                pid = patient_id(path)
                if pid:
                    found[name] = pid
                break
    return found


def label_subjects(cfg: Any, slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``slices`` with ``subject`` set from the files' ``patient_id`` where the runner did not set it."""
    missing = {r.get("fname") for r in slices if not r.get("subject")}
    ids = subject_ids(cfg, [f for f in missing if f])
    return [r if r.get("subject") else {**r, "subject": ids.get(r.get("fname"), "")} for r in slices]
