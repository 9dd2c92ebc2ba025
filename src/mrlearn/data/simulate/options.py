"""Options of the embedded dataset, their validation, hash and default cache location."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from mrlearn.data.simulate.contrasts import CONTRASTS
from mrlearn.errors import input_error

# Bump when the simulator's output for the same options changes, so old caches are not reused
# (2: files also store reconstruction_noiseless; k-space and targets are those of version 1).
SIMULATOR_VERSION = "2"
ANATOMIES = ("mni", "phantom")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SimulationOptions:
    """What to simulate.

    matrix: recon size ``(h, w)`` of the targets (pixels). fov_mm: field of view of the longer recon side (mm);
    pixels are square, ``fov_mm / max(h, w)`` mm. slices: slices per volume (a slab of consecutive slices).
    volumes: volumes per contrast for (train, val, test). contrasts: ``acquisition`` names (see
    :mod:`contrasts`). coils: receive coils. snr: mean noiseless RSS signal over the object divided by the noise
    standard deviation per coil and k-space sample (``inf``: no noise). oversample: 2x readout (H) oversampling
    as in fastMRI raw data. single_coil: one-coil k-space with ``reconstruction_esc`` targets. anatomy: "mni" or
    "phantom". jitter: relative TR/TE jitter per volume. sens_maps: also store the true coil maps. seed: the seed.
    """

    matrix: tuple[int, int] = (128, 128)
    slices: int = 8
    volumes: tuple[int, int, int] = (12, 3, 3)
    contrasts: tuple[str, ...] = CONTRASTS
    coils: int = 8
    snr: float = 30.0
    oversample: bool = False
    single_coil: bool = False
    anatomy: str = "mni"
    fov_mm: float = 240.0
    jitter: float = 0.05
    sens_maps: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        # normalise sequences (lists from YAML/argparse) to tuples so the dataclass stays hashable
        for name in ("matrix", "volumes", "contrasts"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
        validate(self)
        for name in ("snr", "fov_mm", "jitter"):  # 30 and 30.0 must hash alike
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def pixel_mm(self) -> float:
        return float(self.fov_mm) / max(self.matrix)

    @property
    def kspace_hw(self) -> tuple[int, int]:
        h, w = self.matrix
        return (2 * h if self.oversample else h, w)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["matrix"], d["volumes"], d["contrasts"] = list(self.matrix), list(self.volumes), list(self.contrasts)
        if math.isinf(self.snr):
            d["snr"] = "inf"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SimulationOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise input_error("simulation options", f"unknown option(s) {', '.join(unknown)}", f"use {', '.join(sorted(known))}")
        d = dict(d)
        if d.get("snr") == "inf":
            d["snr"] = math.inf
        return cls(**d)


def _opt(name: str) -> str:
    return f"simulate option '{name}'"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate(o: SimulationOptions) -> None:
    """Raise a one-line :class:`MrlearnError` for the first invalid option."""
    if len(o.matrix) != 2 or not all(_is_int(v) and 8 <= v <= 4096 for v in o.matrix):
        raise input_error(_opt("matrix"), f"{o.matrix!r} is not two integers in [8, 4096]", "give H W, e.g. 128 128")
    if not _is_int(o.slices) or not 1 <= o.slices <= 256:
        raise input_error(_opt("slices"), f"{o.slices!r} is not an integer in [1, 256]", "use e.g. 8")
    if len(o.volumes) != 3 or not all(_is_int(v) and v >= 0 for v in o.volumes) or sum(o.volumes) == 0:
        raise input_error(_opt("volumes"), f"{o.volumes!r} is not three counts (train, val, test) >= 0 with a positive sum",
                          "give e.g. 12 3 3")
    if not o.contrasts:
        raise input_error(_opt("contrasts"), "no contrast given", f"choose from {' '.join(CONTRASTS)}")
    for c in o.contrasts:
        if c not in CONTRASTS:
            raise input_error(_opt("contrasts"), f"unknown contrast {c!r}", f"choose from {' '.join(CONTRASTS)}")
    if len(set(o.contrasts)) != len(o.contrasts):
        raise input_error(_opt("contrasts"), f"contrast listed twice in {' '.join(o.contrasts)}", "list each once")
    if not _is_int(o.coils) or not 1 <= o.coils <= 128:
        raise input_error(_opt("coils"), f"{o.coils!r} is not an integer in [1, 128]", "use e.g. 8")
    if isinstance(o.snr, bool) or not isinstance(o.snr, (int, float)) or math.isnan(o.snr) or o.snr <= 0:
        raise input_error(_opt("snr"), f"{o.snr!r} is not a positive number", "use e.g. 30 (or inf for no noise)")
    if o.anatomy not in ANATOMIES:
        raise input_error(_opt("anatomy"), f"unknown anatomy {o.anatomy!r}", f"choose from {' '.join(ANATOMIES)}")
    if isinstance(o.fov_mm, bool) or not isinstance(o.fov_mm, (int, float)) or not 50 <= o.fov_mm <= 600:
        raise input_error(_opt("fov_mm"), f"{o.fov_mm!r} is not a field of view in [50, 600] mm", "use e.g. 240")
    if isinstance(o.jitter, bool) or not isinstance(o.jitter, (int, float)) or not 0 <= o.jitter < 0.5:
        raise input_error(_opt("jitter"), f"{o.jitter!r} is not a relative jitter in [0, 0.5)", "use e.g. 0.05")
    for name in ("oversample", "single_coil", "sens_maps"):
        if not isinstance(getattr(o, name), bool):
            raise input_error(_opt(name), f"{getattr(o, name)!r} is not true/false", "pass a boolean")
    if not _is_int(o.seed) or o.seed < 0:
        raise input_error(_opt("seed"), f"{o.seed!r} is not a non-negative integer", "use e.g. 0")


def options_hash(options: SimulationOptions) -> str:
    """12 hex digits identifying the dataset these options (and this simulator version) produce."""
    payload = json.dumps({"simulator": SIMULATOR_VERSION, **options.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def default_cache_dir(options: SimulationOptions) -> Path:
    """``$MRLEARN_DATA/embedded/<hash>`` if ``MRLEARN_DATA`` is set, else ``~/.cache/mrlearn/embedded/<hash>``."""
    root = os.environ.get("MRLEARN_DATA")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "mrlearn"
    return base / "embedded" / options_hash(options)
