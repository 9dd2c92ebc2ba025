"""A fixed train/val/test split of a flat data folder by subject, independent of any run seed.

The subject of a volume is its ``patient_id`` attribute, else its file name without the suffix. Every volume of a
subject goes to the same split. Subjects are stratified by the set of contrasts (``acquisition``) their volumes
hold; inside a stratum they are ordered by ``sha256(salt + ":" + subject id)`` (a fixed pseudo-random order that
no run seed enters) and cut into ``fractions`` (normalised; largest remainder, each positive fraction gets at least
one subject when there are enough). So every seed of a study trains and validates on the same subjects, and seed
effects are not confounded with split effects.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from mrlearn.errors import MrlearnError


def subject_of(path: str | Path, patient_id: str | None) -> str:
    """The subject id of a volume: its ``patient_id`` when non-empty, else the file name without suffix."""
    pid = (patient_id or "").strip()
    return pid if pid else Path(path).stem


def subject_key(subject: str, salt: str = "") -> str:
    """The subject's place in the fixed order: the hex sha256 of ``salt:subject``."""
    return hashlib.sha256(f"{salt}:{subject}".encode("utf-8")).hexdigest()


def split_counts(n: int, fractions: np.ndarray) -> list[int]:
    """Largest-remainder counts summing to ``n``; every positive fraction gets >= 1 item when ``n`` allows."""
    raw = fractions * n
    counts = np.floor(raw).astype(int)
    for j in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[j] += 1
    positive = np.flatnonzero(fractions > 0)
    if n >= positive.size:
        for j in positive:
            if counts[j] == 0:
                donor = int(np.argmax(counts))
                counts[donor] -= 1
                counts[j] += 1
    return counts.tolist()


def split_by_subject(files: Sequence[str | Path], subjects: Sequence[str | None],
                     fractions: Sequence[float] = (0.8, 0.1, 0.1), groups: Sequence[str] | None = None,
                     salt: str = "") -> tuple[list[Path], list[Path], list[Path]]:
    """Train/val/test lists of ``files`` (each sorted by name) split by subject (see the module docstring).

    ``subjects``: each file's ``patient_id`` ("" or None: its file name); ``groups``: each file's contrast
    (stratification; all one stratum when None); ``salt``: another fixed order (never the run seed).
    """
    f = np.asarray(list(fractions), dtype=float)
    if f.shape != (3,) or not np.all(np.isfinite(f)) or np.any(f < 0) or f.sum() <= 0:
        raise MrlearnError(f"split fractions: got {list(fractions)}; give three non-negative numbers (train, val, "
                           "test) with a positive sum")
    f = f / f.sum()
    paths = [Path(p) for p in files]
    if len(subjects) != len(paths) or (groups is not None and len(groups) != len(paths)):
        raise ValueError("subjects and groups need one entry per file")
    labels = [""] * len(paths) if groups is None else [str(g) for g in groups]
    members: dict[str, list[int]] = defaultdict(list)
    for i, (p, s) in enumerate(zip(paths, subjects)):
        members[subject_of(p, s)].append(i)
    strata: dict[str, list[str]] = defaultdict(list)
    for subject, idx in members.items():
        strata["+".join(sorted({labels[i] for i in idx}))].append(subject)
    out: tuple[list[Path], list[Path], list[Path]] = ([], [], [])
    for stratum in sorted(strata):
        ordered = sorted(strata[stratum], key=lambda s: (subject_key(s, salt), s))
        start = 0
        for part, count in zip(out, split_counts(len(ordered), f)):
            for subject in ordered[start:start + count]:
                part.extend(paths[i] for i in members[subject])
            start += count
    return tuple(sorted(part, key=lambda p: (p.name, str(p))) for part in out)  # type: ignore[return-value]
