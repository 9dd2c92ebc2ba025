"""Tissue segmentations stored in fastMRI-format files (mrlearn extension, written by simulators).

Convention (see :mod:`mrlearn.data.fastmri`):
  * dataset ``segmentation``: uint8 ``[S, h, w]``, the target's shape, one integer class label per target pixel;
  * file attr ``segmentation_labels``: a JSON object mapping a label value (as a string, ``"0"`` .. ``"255"``) to
    a class name, e.g. ``'{"0": "background", "1": "csf"}'``.

Used by :mod:`mrlearn.data.fastmri_write` (validation, encoding) and :mod:`mrlearn.data.fastmri` (reading); every
problem is a one-line :class:`mrlearn.errors.MrlearnError` naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mrlearn.errors import input_error

SEGMENTATION_KEY = "segmentation"
LABELS_ATTR = "segmentation_labels"
MAX_LABEL = 255  # stored as uint8


def segmentation_to_store(path: str | Path, segmentation: Any, target_shape: tuple[int, ...] | None) -> np.ndarray:
    """A segmentation to write -> uint8 ``[S, h, w]``: the target's shape, integer (or integral float) labels 0..255."""
    seg = np.asarray(segmentation)
    if target_shape is None:
        raise input_error(path, "segmentation given without a target", "pass the target it labels (same shape [S, h, w])")
    if seg.shape != tuple(target_shape):
        raise input_error(path, f"segmentation shape {seg.shape} differs from the target's {target_shape}",
                          "pass it with a target of the same shape [S, h, w] (one label per target pixel)")
    if seg.dtype.kind not in "biuf":
        raise input_error(path, f"segmentation is {seg.dtype}, not integer labels", "pass integer class labels 0..255")
    if seg.dtype.kind == "f" and not (np.isfinite(seg).all() and np.array_equal(seg, np.round(seg))):
        raise input_error(path, "segmentation holds non-integral or non-finite values",
                          "pass integer class labels 0..255 (e.g. np.rint(...).astype(np.uint8))")
    if seg.size and (seg.min() < 0 or seg.max() > MAX_LABEL):
        raise input_error(path, f"segmentation labels span {seg.min()}..{seg.max()}, outside 0..{MAX_LABEL}",
                          "store at most 256 classes numbered 0..255")
    return seg.astype(np.uint8)


def labels_to_json(path: str | Path, labels: Mapping[int, str]) -> str:
    """``{label: name}`` -> the JSON string stored in the ``segmentation_labels`` attr (keys as strings, sorted)."""
    if not isinstance(labels, Mapping):
        raise input_error(path, f"segmentation_labels is {type(labels).__name__}, not a mapping",
                          'pass a dict such as {0: "background", 1: "csf"}')
    out: dict[str, str] = {}
    for key, name in labels.items():
        value = _label_value(key)
        if value is None or not isinstance(name, str):
            raise input_error(path, f"segmentation_labels entry {key!r}: {name!r} is not <label 0..{MAX_LABEL}>: <name>",
                              'pass a dict such as {0: "background", 1: "csf"}')
        out[str(value)] = name
    return json.dumps(dict(sorted(out.items(), key=lambda kv: int(kv[0]))))


def labels_from_json(path: str | Path, raw: Any) -> dict[int, str]:
    """The stored ``segmentation_labels`` attr (str or bytes JSON) -> ``{label: name}``; one-line error if unreadable."""
    todo = f"store a JSON object such as '{{\"0\": \"background\", \"1\": \"csf\"}}' in attr '{LABELS_ATTR}'"
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    if isinstance(raw, np.ndarray) and raw.size == 1:
        raw = raw.item()
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise input_error(path, f"attr '{LABELS_ATTR}' is not a JSON object ({str(raw)[:60]!r})", todo)
    labels: dict[int, str] = {}
    for key, name in parsed.items():
        value = _label_value(key)
        if value is None or not isinstance(name, str):
            raise input_error(path, f"attr '{LABELS_ATTR}' entry {key!r}: {name!r} is not <label 0..{MAX_LABEL}>: <name>", todo)
        labels[value] = name
    return labels


def _label_value(key: Any) -> int | None:
    """``key`` (int or decimal string) as a label 0..255, else None."""
    if isinstance(key, (bool, np.bool_)):
        return None
    if isinstance(key, str):
        key = key.strip()
        if not key.isdigit():
            return None
    try:
        value = int(key)
    except (TypeError, ValueError):
        return None
    if isinstance(key, float) and key != value:
        return None
    return value if 0 <= value <= MAX_LABEL else None


def check_stored(path: str | Path, dataset: Any, target_shape: tuple[int, ...] | None) -> None:
    """Validate a stored ``segmentation`` dataset's metadata (not its values): an integer dtype and the target's
    shape ``[S, h, w]`` (``target_shape``; None when the file has no target, which is an error)."""
    dtype, shape = np.dtype(dataset.dtype), tuple(int(v) for v in dataset.shape)
    if dtype.kind not in "biu":
        raise input_error(path, f"'{SEGMENTATION_KEY}' is {dtype}, not integer labels", "store uint8 class labels")
    if target_shape is None or tuple(shape) != tuple(target_shape):
        what = "the file has no target" if target_shape is None else f"the target is {tuple(target_shape)}"
        raise input_error(path, f"'{SEGMENTATION_KEY}' has shape {shape} but {what}",
                          "store one label per target pixel [S, h, w], or remove it")


def stored_to_uint8(path: str | Path, values: np.ndarray) -> np.ndarray:
    """Stored labels (any integer dtype) -> uint8, refusing values outside 0..255 instead of wrapping them."""
    values = np.asarray(values)
    if values.dtype in (np.uint8, np.bool_):
        return values.astype(np.uint8, copy=False)
    if values.size and (values.min() < 0 or values.max() > MAX_LABEL):
        raise input_error(path, f"'{SEGMENTATION_KEY}' holds labels {values.min()}..{values.max()}, outside 0..{MAX_LABEL}",
                          "store uint8 class labels")
    return values.astype(np.uint8)
