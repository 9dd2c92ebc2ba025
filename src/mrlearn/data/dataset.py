"""Slice dataset over a folder (or list) of fastMRI-format volumes.

* Split by subject, never by slice (:func:`mrlearn.data.subjects.split_by_subject`: stratified by contrast, a fixed
  order independent of the run seed); :func:`split_volumes` is the seeded split by volume of a file list.
* Filter by ``acquisition`` (contrast); keep a seeded, nested fraction or count of volumes and/or slices per contrast:
  for one seed the items kept are a prefix of one fixed random order, so 25 % is inside 50 % inside 100 %.
* Lazy: the index is built from metadata only (shapes, attrs, header); samples are read on access through a small
  per-process LRU of open HDF5 handles (``max_open_files``; 0 = open and close per read), so handles and memory
  stay bounded over any number of reads. No file is held open after ``__init__`` (safe for DataLoader workers,
  fork or spawn).
* Each raw sample keeps its own matrix size (docs/architecture.md). ``target_size=(h, w)`` centre-crops or
  zero-pads the image-domain *target* (and ``target_noiseless``, the noiseless reference of simulated files, and
  ``segmentation``, their class labels, padded with 0 = background) to ``(h, w)``; a size beyond twice a file's
  k-space matrix is refused (the crop starts at ``(H - h) // 2`` as :func:`mrlearn.physics.complex.center_crop` and
  fastMRI) and reports ``recon_size = (h, w)``; k-space is never resized.
"""

from __future__ import annotations

import os
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from mrlearn.data import checks
from mrlearn.data.fastmri import VolumeInfo, open_h5, read_slice_from_handle, read_volume_info
from mrlearn.data.subjects import split_by_subject, split_counts
from mrlearn.errors import MrlearnError, input_error

H5_SUFFIXES = (".h5", ".hdf5")
SPLITS = ("train", "val", "test")


def list_volumes(root: str | Path | Iterable[str | Path]) -> list[Path]:
    """The ``.h5`` volumes of a folder (not recursive, sorted by name), one file, or a list of files."""
    if isinstance(root, (str, Path)):
        root = Path(root)
        if not root.exists():
            raise input_error(root, "not found", "check the data path")
        if root.is_file():
            return [root]
        broken = sorted(p.name for p in root.iterdir() if p.is_symlink() and not p.exists())
        if broken:  # a loop or a missing target: say so rather than skip it
            raise input_error(root / broken[0], "is a symbolic link that does not resolve (a loop or a missing target)",
                              "fix or remove the link")
        files = sorted((p for p in root.iterdir() if p.is_file() and p.suffix.lower() in H5_SUFFIXES), key=lambda p: p.name)
        for p in files:
            checks.check_name(p)
        if not files:
            what = "folder is empty" if not any(root.iterdir()) else "folder holds no .h5 files"
            raise input_error(root, what, "point to a folder of fastMRI-format volumes (mrlearn simulate or mrlearn convert make them)")
        return files
    files = [Path(p) for p in root]
    if not files:
        raise MrlearnError("data: empty list of volumes; pass at least one .h5 file")
    for p in files:
        checks.check_name(p)
        if not p.is_file():
            raise input_error(p, "not found", "check the data path")
    return files


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode("utf-8"))])


def split_volumes(
    files: Sequence[str | Path],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> tuple[list[Path], list[Path], list[Path]]:
    """Split volumes (never slices) into train/val/test, deterministic for ``seed``.

    Within each group (e.g. the contrast of each file; all one group when None) the files, ordered by name, are
    shuffled with a generator seeded by ``(seed, group)`` and cut by ``fractions`` (normalised; largest remainder,
    each positive fraction gets at least one volume when there are enough). Each returned list is sorted by name.
    """
    f = np.asarray(list(fractions), dtype=float)
    if f.shape != (3,) or not np.all(np.isfinite(f)) or np.any(f < 0) or f.sum() <= 0:
        raise MrlearnError(f"split fractions: got {list(fractions)}; give three non-negative numbers (train, val, test) with a positive sum")
    f = f / f.sum()
    paths = [Path(p) for p in files]
    labels = [""] * len(paths) if groups is None else [str(g) for g in groups]
    if len(labels) != len(paths):
        raise ValueError("groups must have one label per file")
    out: tuple[list[Path], list[Path], list[Path]] = ([], [], [])
    for group in sorted(set(labels)):
        members = sorted((p for p, g in zip(paths, labels) if g == group), key=lambda p: (p.name, str(p)))
        order = _rng(seed, "split:" + group).permutation(len(members))
        counts = split_counts(len(members), f)
        start = 0
        for part, count in zip(out, counts):
            part.extend(members[i] for i in order[start : start + count])
            start += count
    return tuple(sorted(part, key=lambda p: (p.name, str(p))) for part in out)  # type: ignore[return-value]


def nested_subset(n: int, *, fraction: float | None = None, count: int | None = None, seed: int = 0, key: str = "") -> np.ndarray:
    """Indices (sorted) of a seeded subset of ``range(n)``: a prefix of one permutation fixed by ``(seed, key)``.

    Nested: for the same seed and key, a smaller fraction/count gives a subset of a larger one. ``fraction`` in
    (0, 1] keeps ``max(1, round(fraction * n))``; ``count`` keeps ``min(count, n)``; neither keeps all.
    """
    if fraction is not None and count is not None:
        raise MrlearnError("subset: give a fraction or a count, not both")
    if fraction is None and count is None:
        return np.arange(n)
    if fraction is not None:
        if not (0 < float(fraction) <= 1):
            raise MrlearnError(f"subset fraction: {fraction} is outside (0, 1]; use e.g. 0.25")
        k = max(1, int(round(float(fraction) * n)))
    else:
        if int(count) < 1:
            raise MrlearnError(f"subset count: {count} must be >= 1")
        k = min(int(count), n)
    order = _rng(seed, "subset:" + key).permutation(n)
    return np.sort(order[: min(k, n)])


class _HandleCache:
    """LRU of open read-only HDF5 files, valid in the process that opened them (reset after fork)."""

    def __init__(self, max_open: int):
        self.max_open = max(0, int(max_open))
        self._files: OrderedDict[str, h5py.File] = OrderedDict()
        self._pid = os.getpid()

    def get(self, path: Path) -> h5py.File:
        if self._pid != os.getpid():  # forked worker: never use the parent's handles
            self._files = OrderedDict()
            self._pid = os.getpid()
        key = str(path)
        f = self._files.get(key)
        if f is not None and f.id.valid:
            self._files.move_to_end(key)
            return f
        f = open_h5(path)
        if self.max_open > 0:
            self._files[key] = f
            while len(self._files) > self.max_open:
                _, old = self._files.popitem(last=False)
                old.close()
        return f

    def release(self, f: h5py.File) -> None:
        """Close ``f`` unless the cache keeps it."""
        if self.max_open == 0:
            f.close()

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files = OrderedDict()

    def __len__(self) -> int:
        return len(self._files)


class SliceDataset(torch.utils.data.Dataset):
    """Raw slices (dicts, docs/architecture.md) of fastMRI-format volumes, optionally passed through ``transform``.

    Args:
        root: a folder of ``.h5`` volumes, one file, or a list of files.
        contrasts: keep only these ``acquisition`` names (an unknown name is an error listing those present).
        split: None (all volumes) or ``"train"``/``"val"``/``"test"``, by subject (``patient_id``, else the file
            name) via :func:`mrlearn.data.subjects.split_by_subject`, stratified by contrast with
            ``split_fractions``; ``split_seed`` salts the fixed subject order (never pass the run seed: every seed
            of a study must see the same split).
        volume_fraction / volume_count: seeded nested subset of volumes per contrast (after the split).
        slice_fraction / slice_count: seeded nested subset of slices per contrast (after the volume subset).
        seed: seed of the subsets (the same seed gives nested subsets for growing fractions).
        target_size: ``(h, w)`` centre crop/zero-pad of the target image; ``recon_size`` reports it.
        transform: callable applied to each raw sample.
        max_open_files: open handles kept per process (LRU); 0 opens and closes the file on every read.
        cache_mb: keep read slices (after ``target_size``, before ``transform``) in memory up to this many MB per
            process, the first ones read; every read returns copies of the kept arrays (0: read every time).
    """

    def __init__(
        self,
        root: str | Path | Iterable[str | Path],
        *,
        contrasts: Sequence[str] | str | None = None,
        split: str | None = None,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        volume_fraction: float | None = None,
        volume_count: int | None = None,
        slice_fraction: float | None = None,
        slice_count: int | None = None,
        seed: int = 0,
        target_size: tuple[int, int] | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        max_open_files: int = 4,
        cache_mb: float = 0.0,
    ):
        files = list_volumes(root)
        where = root if isinstance(root, (str, Path)) else "data"
        infos = [read_volume_info(p) for p in files]  # metadata only; validates every file up front

        if split is not None:
            if split not in SPLITS:
                raise MrlearnError(f"split: unknown split '{split}'; use one of {', '.join(SPLITS)}")
            parts = split_by_subject([i.path for i in infos], [i.patient_id for i in infos], split_fractions,
                                     groups=[i.acquisition for i in infos], salt=str(split_seed))
            chosen = {str(p) for p in parts[SPLITS.index(split)]}
            infos = [i for i in infos if str(i.path) in chosen]

        present = sorted({i.acquisition for i in infos})
        if contrasts:  # None or empty: every contrast
            wanted = [contrasts] if isinstance(contrasts, str) else list(contrasts)
            unknown = [c for c in wanted if c not in present]
            if unknown:
                raise input_error(where, f"unknown contrast(s) {', '.join(unknown)}",
                                  f"contrasts present: {', '.join(present) or '(none)'}")
            infos = [i for i in infos if i.acquisition in wanted]

        kept_infos: list[VolumeInfo] = []
        vol_idx: list[int] = []
        slice_idx: list[int] = []
        for contrast in sorted({i.acquisition for i in infos}):
            group = sorted((i for i in infos if i.acquisition == contrast), key=lambda i: (i.path.name, str(i.path)))
            keep = nested_subset(len(group), fraction=volume_fraction, count=volume_count, seed=seed, key="volumes:" + contrast)
            group = [group[j] for j in keep]
            pairs = [(v, s) for v in range(len(group)) for s in range(group[v].num_slices)]
            keep_s = nested_subset(len(pairs), fraction=slice_fraction, count=slice_count, seed=seed, key="slices:" + contrast)
            base = len(kept_infos)
            kept_infos.extend(group)
            for j in keep_s:
                v, s = pairs[j]
                vol_idx.append(base + v)
                slice_idx.append(s)
        if not vol_idx:
            raise input_error(where, f"no slices left for split {split!r}", "use more volumes or other split fractions")
        self.volumes: list[VolumeInfo] = kept_infos
        self._vol = np.asarray(vol_idx, dtype=np.int64)
        self._slice = np.asarray(slice_idx, dtype=np.int64)
        if target_size is not None:
            target_size = (int(target_size[0]), int(target_size[1]))
            if min(target_size) < 1:
                raise MrlearnError(f"target_size: {target_size} must be two positive integers (h, w)")
            for info in kept_infos:  # before anything of that size is allocated
                checks.check_recon_size(info.path, target_size, info.matrix_size, "requested recon size (data.recon_size)")
        self.target_size = target_size
        self.transform = transform
        self._handles = _HandleCache(max_open_files)
        self._cache = _SampleCache(cache_mb)

    # ------------------------------------------------------------------ index
    def __len__(self) -> int:
        return int(self._vol.shape[0])

    @property
    def contrasts(self) -> list[str]:
        """Acquisition names of the kept volumes, sorted."""
        return sorted({i.acquisition for i in self.volumes})

    def sample_key(self, index: int) -> tuple[str, int]:
        """``(file name, slice)`` of dataset item ``index`` (no file access)."""
        return self.volumes[int(self._vol[index])].path.name, int(self._slice[index])

    def sample_contrast(self, index: int) -> str:
        """Acquisition of dataset item ``index`` (no file access; for stratified samplers)."""
        return self.volumes[int(self._vol[index])].acquisition

    def open_handles(self) -> int:
        """Number of HDF5 handles this dataset holds open in the current process."""
        return len(self._handles)

    # ------------------------------------------------------------------ access
    def __getitem__(self, index: int) -> Any:
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f"index {index} out of range for {n} slices")
        index = int(index) % n
        sample = self._cache.get(index)
        if sample is None:
            sample = self._cache.put(index, self._read(index))
        return self.transform(sample) if self.transform is not None else sample

    def _read(self, index: int) -> dict[str, Any]:
        """Raw sample ``index`` from its file (cropped or padded to ``target_size``)."""
        info = self.volumes[int(self._vol[index])]
        f = self._handles.get(info.path)
        try:
            sample = read_slice_from_handle(f, info, int(self._slice[index]))
        except OSError as exc:
            raise checks.open_error(info.path, exc, "read") from None
        finally:
            self._handles.release(f)
        if self.target_size is not None:
            for key in ("target", "target_noiseless", "segmentation"):  # images of the target's grid
                if sample.get(key) is not None:
                    sample[key] = _crop_or_pad(sample[key], self.target_size)
            sample["recon_size"] = self.target_size
        return sample

    def close(self) -> None:
        """Close the handles opened by this process."""
        self._handles.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = _HandleCache(self._handles.max_open)
        state["_cache"] = _SampleCache(self._cache.budget / 2**20)  # each process fills its own
        return state

    def __del__(self) -> None:
        try:
            self._handles.close()
        except (OSError, RuntimeError, AttributeError, TypeError, ValueError):  # interpreter shutdown: nothing to save
            pass


class _SampleCache:
    """Raw samples kept by dataset index up to ``budget`` bytes (no eviction: the first ones read stay); ``get``
    returns a copy of the kept dict with copies of its arrays (a transform may change what it is given)."""

    def __init__(self, cache_mb: float):
        self.budget = int(checks.check_cache_mb(cache_mb) * 2**20)
        self.used = 0
        self.items: dict[int, dict[str, Any]] = {}

    def get(self, index: int) -> dict[str, Any] | None:
        kept = self.items.get(index)
        return None if kept is None else {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in kept.items()}

    def put(self, index: int, sample: dict[str, Any]) -> dict[str, Any]:
        """Keep ``sample`` when it fits the budget; returns it (a kept one as a copy)."""
        size = sum(v.nbytes for v in sample.values() if isinstance(v, np.ndarray))
        if self.budget <= 0 or self.used + size > self.budget:
            return sample
        self.items[index] = sample
        self.used += size
        return self.get(index)  # type: ignore[return-value]


def _crop_or_pad(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop / zero-pad ``[h, w]`` to ``size`` (same centring as physics.complex.crop_or_pad)."""
    h, w = image.shape[-2:]
    ch, cw = min(size[0], h), min(size[1], w)
    top, left = (h - ch) // 2, (w - cw) // 2
    image = image[..., top : top + ch, left : left + cw]
    out = np.zeros(image.shape[:-2] + tuple(size), dtype=image.dtype)
    t, l = (size[0] - ch) // 2, (size[1] - cw) // 2
    out[..., t : t + ch, l : l + cw] = image
    return out
