"""Typed training samples and batches: what ``data.transforms.ReconTransform`` gives a method.

A :class:`Sample` is one slice after the transform; :func:`collate` stacks samples into a :class:`Batch` with the
same field names and a leading batch axis ``B``. Shapes and units (per sample; the batch adds ``B`` in front):

=====================  ==============================================================================================
``kspace``             ``[C, H, W]`` complex64: the acquired (masked) k-space divided by ``scale``
                       (``C = 1`` single-coil); None unless the method asked for k-space (``keep_kspace``)
``mask``               ``[1, 1, W]`` column or ``[1, H, W]`` 2-D float32 0/1 sampling mask, broadcast over coils; None
                       without k-space
``target``             ``[1, h, w]`` float32 reference magnitude in data units, at the recon size (zeros when
                       ``has_target`` is False)
``target_noiseless``   ``[1, h, w]`` float32 noiseless reference of a simulated file (``reconstruction_noiseless``),
                       in the target's units and size; None when the file has none
``segmentation``       ``[1, h, w]`` int64 class indices of a simulated file (``segmentation``, names in its
                       ``segmentation_labels`` attr), cropped like the target, 0 (background) where it is zero-padded;
                       None when the file has none; -1 (ignore index) in a batch for the samples that lack one
``image``              ``[1, h, w]`` float32 network input of image-domain models: the zero-filled magnitude
                       (RSS over coils) instance-normalised, ``clamp((zero_filled - mean) / std, -6, 6)``
``zero_filled``        ``[1, h, w]`` float32 zero-filled magnitude in data units
``mean, std``          0-d float32: the statistics of that normalisation (``std`` 1 when zero)
``sens_maps``          ``[C, H, W]`` complex64 coil maps stored with the data, or None
``max``                float: maximum of the target volume (NaN when unknown); the batch holds float64 ``[B]``
``scale``              0-d float32: maximum of the zero-filled magnitude (1 when zero); None without k-space.
                       Multiply a physics network's output by it to return to data units
``has_target``         bool: whether ``target`` is a real reference
``fname``              str: file name; ``slice`` int: slice index in the file
``acquisition``        str or None: contrast name of the file (e.g. ``CORPD_FBK``)
``recon_size``         ``(h, w)``: the size of ``target``/``image``
``padding``            ``(left, right)`` acquired columns ``[left, right)`` of zero-padded k-space, or None
``task``               int task index (multi-task datasets), or None
=====================  ==============================================================================================

A batch keeps ``fname``, ``acquisition``, ``recon_size`` and ``padding`` as lists (one entry per sample); the other
fields are stacked with :func:`torch.utils.data.default_collate` (tensors ``[B, ...]``, numbers ``[B]``).

Both types also read as a mapping of the fields that are set (``batch["kspace"]``, ``"sens_maps" in batch``,
``batch.get("sens_maps")``), so code written for dict samples keeps working. Defining :class:`Sample` registers
:func:`collate` with torch's ``default_collate`` (its documented extension point), so a plain ``DataLoader``
yields a :class:`Batch`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch
from torch.utils.data import default_collate
from torch.utils.data._utils.collate import default_collate_fn_map

# Fields a batch keeps as one Python list entry per sample instead of stacking.
PER_SAMPLE_FIELDS = ("fname", "acquisition", "recon_size", "padding")
# Fields that may be set in only some samples of a batch (e.g. simulated and real files mixed) -> the value that
# fills a tensor of the same shape for the samples that lack one: NaN (scorers read it as "absent") for the noiseless
# reference, -1 for class labels (the ignore index, e.g. ``cross_entropy(..., ignore_index=-1)``).
FILL_VALUES: dict[str, float] = {"target_noiseless": math.nan, "segmentation": -1}


class _FieldMapping(MutableMapping):
    """Mapping view of a dataclass: the keys are the names of the fields that are not None."""

    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key, None) if key in self._names() else None
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self._names():
            raise KeyError(f"{type(self).__name__} has no field {key!r}; fields: {', '.join(self._names())}")
        setattr(self, key, value)

    def __delitem__(self, key: str) -> None:
        self[key]  # KeyError when absent
        setattr(self, key, None)

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._names() if getattr(self, name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def __repr__(self) -> str:
        def short(v: Any) -> str:
            if torch.is_tensor(v):
                return f"tensor{list(v.shape)} {str(v.dtype).replace('torch.', '')}" if v.ndim else repr(v.item())
            return repr(v)

        return f"{type(self).__name__}({', '.join(f'{k}={short(v)}' for k, v in self.items())})"


@dataclass(eq=False, repr=False)
class Sample(_FieldMapping):
    """One transformed slice; shapes and units in the module docstring."""

    kspace: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    target: torch.Tensor | None = None
    target_noiseless: torch.Tensor | None = None
    segmentation: torch.Tensor | None = None
    image: torch.Tensor | None = None
    zero_filled: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    sens_maps: torch.Tensor | None = None
    max: float = math.nan
    scale: torch.Tensor | None = None
    has_target: bool = False
    fname: str = ""
    slice: int = 0
    acquisition: str | None = None
    recon_size: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None
    task: int | None = None


@dataclass(eq=False, repr=False)
class Batch(_FieldMapping):
    """Collated samples: the fields of :class:`Sample` with a leading batch axis (see the module docstring)."""

    kspace: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    target: torch.Tensor | None = None
    target_noiseless: torch.Tensor | None = None
    segmentation: torch.Tensor | None = None
    image: torch.Tensor | None = None
    zero_filled: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    sens_maps: torch.Tensor | None = None
    max: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    has_target: torch.Tensor | None = None
    fname: list[str] | None = None
    slice: torch.Tensor | None = None
    acquisition: list[str | None] | None = None
    recon_size: list[tuple[int, int] | None] | None = None
    padding: list[tuple[int, int] | None] | None = None
    task: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """Number of samples ``B``."""
        for name in ("fname", "kspace", "image", "target"):
            value = getattr(self, name)
            if value is not None:
                return len(value)
        return 0


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples into a :class:`Batch` (lists for ``PER_SAMPLE_FIELDS``, ``default_collate`` for the rest).

    A field must be set in all samples or in none (e.g. ``sens_maps``); otherwise this raises ``ValueError``,
    except for ``FILL_VALUES`` (``target_noiseless``: NaN, ``segmentation``: -1), where the samples without it get a
    tensor of the others' shape and dtype filled with that value.

    >>> import torch
    >>> s = [Sample(target=torch.zeros(1, 4, 4), fname=f"a{i}.h5", slice=i, has_target=True) for i in range(3)]
    >>> b = collate(s)
    >>> tuple(b.target.shape), b.fname, b.slice.tolist(), b["has_target"].tolist(), "kspace" in b
    ((3, 1, 4, 4), ['a0.h5', 'a1.h5', 'a2.h5'], [0, 1, 2], [True, True, True], False)
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    values: dict[str, Any] = {}
    for f in fields(Sample):
        column = [getattr(s, f.name) for s in samples]
        if f.name in PER_SAMPLE_FIELDS:
            values[f.name] = list(column)
            continue
        missing = sum(v is None for v in column)
        if missing == len(column):
            values[f.name] = None
        elif missing and f.name in FILL_VALUES:
            like = next(v for v in column if v is not None)
            fill = torch.full_like(like, FILL_VALUES[f.name])
            values[f.name] = default_collate([fill if v is None else v for v in column])
        elif missing:
            raise ValueError(f"field {f.name!r} is set in {len(column) - missing} of {len(column)} samples of a "
                             "batch; it must be set in all or none")
        else:
            values[f.name] = default_collate(column)
    return Batch(**values)


def as_batch(batch: Batch | Mapping[str, Any]) -> Batch:
    """A :class:`Batch` as is, or one built from a mapping with the same keys (keys that are not fields are dropped)."""
    if isinstance(batch, Batch):
        return batch
    names = Batch._names()
    return Batch(**{k: batch[k] for k in batch if k in names})


def _collate_for_torch(batch: Sequence[Sample], *, collate_fn_map: Any = None) -> Batch:
    return collate(batch)


default_collate_fn_map[Sample] = _collate_for_torch
