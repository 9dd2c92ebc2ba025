"""Files that are never half-written, and folders one process at a time.

Atomic writes: data go to ``<name>.tmp`` in the same folder, are flushed and fsynced, then moved into place with
``os.replace``; on any error (disk full, read-only folder, a signal) the temporary file is removed and the previous
file, if any, is left as it was. A reader or a killed writer never sees a partial file.

:class:`FolderLock` marks a folder as held by one live process: a lease (``.lock`` holding PID, host and a heartbeat
timestamp refreshed while the holder lives; :mod:`mrlearn.lease`). A lease whose holder is gone (same host, PID not
running) or whose heartbeat expired (any host) is taken over with a message; a live holder is an error.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from mrlearn.errors import MrlearnError, input_error


def _write_error(path: Path, exc: OSError) -> MrlearnError:
    if exc.errno == errno.ENOSPC:
        what, todo = "no space left on the device", "free disk space or choose another folder"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what, todo = "folder is not writable", "choose a writable folder or fix its permissions"
    else:
        what, todo = f"cannot write ({exc.strerror or exc})", "check the folder"
    return input_error(path, what, todo)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed.

    For writers that want a file name (h5py, nibabel, ``torch.save``). ``OSError`` becomes a one-line
    :class:`MrlearnError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(path, exc) from None
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise _write_error(path, exc) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy/torch scalars and arrays become plain numbers/lists)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_plain) + "\n")


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def safe_child(root: str | Path, name: str, where: str = "name") -> Path:
    """``root / name`` where ``name`` must stay inside ``root`` (no absolute path, no ``..``)."""
    p = Path(name)
    if not name or p.is_absolute() or ".." in p.parts or name.startswith("~") or "\x00" in name:
        raise input_error(where, f"{name!r} would write outside {root}",
                          "use a plain name (letters, digits, - _ .); set the folder with --out")
    if not p.parts:  # '.', './': the root itself, which would become the run folder
        raise input_error(where, f"{name!r} does not name a folder inside {root}",
                          "use a plain name (letters, digits, - _ .); set the folder with --out")
    return Path(root) / p


def read_text(path: str | Path, what: str = "text") -> str:
    """The UTF-8 text of ``path``; a missing, unreadable or non-UTF-8 file is a one-line error naming it."""
    p = Path(path)
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise input_error(p, f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
                          f"save the {what} as UTF-8") from None
    except OSError as exc:
        raise input_error(p, f"cannot read the file ({exc.strerror or exc})", "check the path and its permissions") from None


def guard_outputs(out: str | Path, inputs: Iterable[str | Path], option: str = "--out") -> Path:
    """Refuse an output folder that would overwrite an input: ``out`` must not be the folder of any input file
    (nor one of them), must not lie inside an input folder, and must not hold a raw data file (``kspace``) under the
    name of an input ``.h5`` file (checked before any work starts). Returns ``out`` as a Path."""
    out_path = Path(out)
    target = out_path.resolve()
    for item in inputs:
        p = Path(item).resolve()
        folder = p if p.is_dir() else p.parent
        if target == p or target == folder:
            raise input_error(option, f"{out} is the folder of the input data ({item}); outputs never replace inputs",
                              "choose another output folder")
        if p.is_dir() and folder in target.parents:
            raise input_error(option, f"{out} lies inside the input folder {item} (its files would be read as inputs "
                              "next time)", "choose an output folder outside the data folder")
        names = [c.name for c in p.iterdir() if c.suffix.lower() in (".h5", ".hdf5")] if p.is_dir() else [p.name]
        for name in names:
            refuse_overwriting_data(out_path / name)
    return out_path


def refuse_overwriting_data(path: str | Path, keys: tuple[str, ...] = ("kspace",)) -> None:
    """A one-line error when ``path`` exists and is an HDF5 file holding any of ``keys`` (raw data, not an output)."""
    p = Path(path)
    if not p.is_file():
        return
    try:
        import h5py

        with h5py.File(p, "r") as f:
            held = [k for k in keys if k in f]
    except OSError:
        return
    if held:
        raise input_error(p, f"exists and holds '{held[0]}' (input data, not an output of mrlearn); not overwritten",
                          "choose an output folder that does not hold data files")


from mrlearn.lease import FolderLock, is_locked_by_other, pid_alive  # noqa: E402,F401 - re-exported (lease imports io)
