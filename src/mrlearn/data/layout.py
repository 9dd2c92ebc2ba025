"""Split folders of a data root, and fastMRI's naming of them.

fastMRI ships each anatomy as ``{singlecoil,multicoil}_{train,val,test,challenge}/`` folders of ``.h5`` volumes
(single-coil: k-space ``[S, H, W]`` and ``reconstruction_esc`` targets; multi-coil: ``[S, C, H, W]`` and
``reconstruction_rss``). A config names one kind (``data.train: singlecoil_train``); a root that holds only the
other kind's folders is the same recipe on the other kind of data (the transforms take the magnitude of one coil
or the root-sum-of-squares of several), so :func:`fastmri_folders` switches the folder names to what the root has
and says so. Nothing else is renamed: a root holding the configured folders, both kinds, or folders of other names
is left as configured.
"""

from __future__ import annotations

import re
from pathlib import Path

KINDS = ("singlecoil", "multicoil")
_FASTMRI = re.compile(r"^(singlecoil|multicoil)_(\w+)$")
DESCRIBE = {"singlecoil": "single-coil: magnitude input, reconstruction_esc targets",
            "multicoil": "multi-coil: root-sum-of-squares input, reconstruction_rss targets"}


def fastmri_kind(name: str) -> tuple[str, str] | None:
    """``("multicoil", "train")`` for ``multicoil_train``; None for a folder name outside fastMRI's scheme."""
    match = _FASTMRI.match(str(name))
    return (match.group(1), match.group(2)) if match else None


def fastmri_folders(root: str | Path, folders: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """The split folders to read in ``root`` (``{"train": name, "val": name, "test": name}``) and a note when they
    were switched to the other coil kind (None otherwise).

    Switched only when every configured name is fastMRI's of one kind, ``root`` has none of the configured
    ``train``/``val`` folders and has both of the other kind's.
    """
    root = Path(root)
    kinds = {fastmri_kind(name) for name in folders.values()}
    if None in kinds or len({k[0] for k in kinds if k}) != 1:
        return dict(folders), None
    kind = next(iter(kinds))[0]  # type: ignore[index]
    other = KINDS[1 - KINDS.index(kind)]
    if any((root / folders[s]).is_dir() for s in ("train", "val") if s in folders):
        return dict(folders), None
    switched = {split: f"{other}_{fastmri_kind(name)[1]}" for split, name in folders.items()}  # type: ignore[index]
    if not all((root / switched[s]).is_dir() for s in ("train", "val") if s in switched):
        return dict(folders), None
    note = (f"data.root {root} holds {other} folders ({switched['train']}/, {switched['val']}/), not the configured "
            f"{folders['train']}/: using them ({DESCRIBE[other]}); set data.train/data.val/data.test to choose")
    return switched, note


def describe_root(root: str | Path, limit: int = 6) -> str:
    """What a data root holds, for messages: its sub-folders (up to ``limit``) or that it has none."""
    root = Path(root)
    try:
        subs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return "cannot be listed"
    if not subs:
        return "has no sub-folders"
    more = f" and {len(subs) - limit} more" if len(subs) > limit else ""
    return "has " + ", ".join(f"{s}/" for s in subs[:limit]) + more
