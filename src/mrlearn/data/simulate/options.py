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
from mrlearn.data.simulate.slabs import ORIENTATIONS
from mrlearn.errors import input_error

# Bump when the simulator's output for the same options changes, so old caches are not reused
# (2: files also store reconstruction_noiseless; 3: a population of subjects with segmentations).
SIMULATOR_VERSION = "3"
ANATOMIES = ("mni", "phantom")
SPLITS = ("train", "val", "test")


def split_subjects(n: int) -> tuple[int, int, int]:
    """``N`` subjects as (train, val, test): val ``max(1, round(0.15 N))``, test ``max(1, round(0.4 N))``, train the
    rest (26 -> 12 / 4 / 10)."""
    val, test = max(1, round(0.15 * n)), max(1, round(0.4 * n))
    return (n - val - test, val, test)


@dataclass(frozen=True)
class SimulationOptions:
    """What to simulate: a population of subjects, one fastMRI file per subject and contrast.

    matrix: recon size ``(h, w)`` of the targets (pixels). fov_mm: field of view of the longer recon side (mm);
    pixels are square, ``fov_mm / max(h, w)`` mm. subjects: subjects in (train, val, test) (an int ``N`` is split by
    :func:`split_subjects`); train takes subjects ``first_subject ...``, then val, then test, so no two splits share
    one. slices: slices per subject in (train, val, test) (an int: the same in each), a slab of consecutive slices.
    orientations: slab orientations, subject ``k`` gets ``orientations[k mod len]``. contrasts: ``acquisition``
    names (see :mod:`contrasts`), co-registered per subject. coils: receive coils. snr: the population's median
    signal-to-noise ratio (mean noiseless RSS signal over the object / noise standard deviation per coil and k-space
    sample; ``inf``: no noise), each acquisition drawn log-uniformly within a factor 1.3 of it. oversample: 2x
    readout (H) oversampling as in fastMRI raw data. single_coil: one-coil k-space with ``reconstruction_esc``
    targets. anatomy: "mni" or "phantom" (the base the subjects are made from). variation: False makes every
    subject the unmodified base anatomy (coils, slab, noise still vary). lesion_fraction: probability that a subject
    has white-matter lesions. jitter: relative TR/TE jitter per acquisition. sens_maps: also store the true coil
    maps. seed: the population; subject ``k`` is determined by ``(seed, k)`` and the options.
    """

    matrix: tuple[int, int] = (128, 128)
    subjects: tuple[int, int, int] = (12, 4, 10)
    slices: tuple[int, int, int] = (8, 6, 4)
    orientations: tuple[str, ...] = ORIENTATIONS
    first_subject: int = 0
    contrasts: tuple[str, ...] = CONTRASTS
    coils: int = 8
    snr: float = 30.0
    oversample: bool = False
    single_coil: bool = False
    anatomy: str = "mni"
    variation: bool = True
    lesion_fraction: float = 0.2
    fov_mm: float = 240.0
    jitter: float = 0.05
    sens_maps: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        # normalise sequences (lists from YAML/argparse) to tuples so the dataclass stays hashable
        for name in ("matrix", "subjects", "slices", "orientations", "contrasts"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
        if _is_int(self.subjects) or (isinstance(self.subjects, tuple) and len(self.subjects) == 1 and _is_int(self.subjects[0])):
            n = self.subjects if _is_int(self.subjects) else self.subjects[0]
            if n < 3:
                raise input_error(_opt("subjects"), f"{n!r} subjects cannot fill train, val and test",
                                  "give at least 3, or three counts TRAIN VAL TEST")
            object.__setattr__(self, "subjects", split_subjects(n))
        if _is_int(self.slices) or (isinstance(self.slices, tuple) and len(self.slices) == 1 and _is_int(self.slices[0])):
            n = self.slices if _is_int(self.slices) else self.slices[0]
            object.__setattr__(self, "slices", (n, n, n))
        validate(self)
        for name in ("snr", "fov_mm", "jitter", "lesion_fraction"):  # 30 and 30.0 must hash alike
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
        for name in ("matrix", "subjects", "slices", "orientations", "contrasts"):
            d[name] = list(getattr(self, name))
        if math.isinf(self.snr):
            d["snr"] = "inf"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "simulation options") -> "SimulationOptions":
        """Options from a mapping (``to_dict``'s form); an unknown key is a one-line error located at ``where``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise input_error(f"{where}.{unknown[0]}", f"unknown simulation option (all unknown options: {', '.join(unknown)})",
                              f"valid keys: {', '.join(sorted(known))}")
        d = dict(d)
        if d.get("snr") == "inf":
            d["snr"] = math.inf
        return cls(**d)


def options_from_config(given: Any, where: str) -> SimulationOptions:
    """Options from a config mapping ``given`` (None: the defaults) found at ``where`` (e.g. ``data.embedded``);
    a one-line error names an unknown key, and :func:`validate` a bad value."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise input_error(where, f"{given!r} is not a mapping of simulation options", "use e.g. {matrix: [64, 64]}")
    return SimulationOptions.from_dict(given, where)


def _opt(name: str) -> str:
    return f"simulate option '{name}'"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate(o: SimulationOptions) -> None:
    """Raise a one-line :class:`MrlearnError` for the first invalid option."""
    if len(o.matrix) != 2 or not all(_is_int(v) and 8 <= v <= 4096 for v in o.matrix):
        raise input_error(_opt("matrix"), f"{o.matrix!r} is not two integers in [8, 4096]", "give H W, e.g. 128 128")
    if not isinstance(o.slices, tuple) or len(o.slices) != 3 or not all(_is_int(v) and 1 <= v <= 256 for v in o.slices):
        raise input_error(_opt("slices"), f"{o.slices!r} is not one or three integers in [1, 256]", "use e.g. 8 or 8 6 4")
    if (not isinstance(o.subjects, tuple) or len(o.subjects) != 3 or not all(_is_int(v) and 0 <= v <= 100_000 for v in o.subjects)
            or sum(o.subjects) == 0):
        raise input_error(_opt("subjects"), f"{o.subjects!r} is not N or three counts (train, val, test) >= 0 with a positive sum",
                          "give e.g. 26 or 12 4 10")
    if not isinstance(o.orientations, tuple) or not o.orientations or any(v not in ORIENTATIONS for v in o.orientations):
        raise input_error(_opt("orientations"), f"{o.orientations!r} is not a list of orientations",
                          f"choose from {' '.join(ORIENTATIONS)}")
    if len(set(o.orientations)) != len(o.orientations):
        raise input_error(_opt("orientations"), f"orientation listed twice in {' '.join(o.orientations)}", "list each once")
    if not _is_int(o.first_subject) or not 0 <= o.first_subject <= 1_000_000:
        raise input_error(_opt("first_subject"), f"{o.first_subject!r} is not an integer in [0, 1000000]", "use e.g. 0")
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
    if (isinstance(o.lesion_fraction, bool) or not isinstance(o.lesion_fraction, (int, float))
            or not 0 <= o.lesion_fraction <= 1):
        raise input_error(_opt("lesion_fraction"), f"{o.lesion_fraction!r} is not a fraction in [0, 1]", "use e.g. 0.2")
    for name in ("oversample", "single_coil", "sens_maps", "variation"):
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
