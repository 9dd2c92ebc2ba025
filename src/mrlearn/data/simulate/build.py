"""Build the embedded dataset: a population of subjects, one fastMRI-format HDF5 file per subject and contrast.

Layout: ``<root>/{train,val,test}/<ACQ>_sub-<kkkk>_<orientation>.h5`` (each with ``reconstruction_noiseless``, the
target computed without noise, and ``segmentation``, the tissue label of every target pixel, beside
``reconstruction_rss``; attr ``patient_id`` = ``sub-<kkkk>``) and ``<root>/manifest.json`` (options, options hash,
seed, versions, geometry, contrast protocols, every subject with its split and parameters, and every file).

Subjects ``first_subject, first_subject + 1, ...`` go to train, then val, then test (``subjects`` counts), so no
two splits share a subject. Subject ``k`` is drawn by :func:`subject.draw_subject` from ``(seed, k)``; its slab
and coils from the generator ``(seed, k, 1)``; each contrast's TR/TE jitter, SNR, phase and noise from
``(seed, k, 4, contrast index)``. So every file is determined by the options alone, and a subject is the same
whichever split counts are asked for. A second call with the same options on a folder whose manifest has the same
options hash, with all files present, reuses it ("reused").
"""

from __future__ import annotations

import json
import math
from importlib import metadata
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mrlearn import __version__
from mrlearn.data.fastmri import make_ismrmrd_header, write_volume
from mrlearn.data.simulate.anatomy import Anatomy, mni_anatomy
from mrlearn.data.simulate.contrasts import CONTRASTS, PROTOCOLS, jittered
from mrlearn.data.simulate.options import SIMULATOR_VERSION, SPLITS, SimulationOptions, default_cache_dir, options_hash
from mrlearn.data.simulate.phantom import phantom_anatomy
from mrlearn.data.simulate.slabs import Layout, anatomy_layout, sample_slab, slab_points, slice_spacing
from mrlearn.data.simulate.subject import draw_subject
from mrlearn.data.simulate.tissue import SEGMENTATION_LABELS, TISSUE_INDEX, segmentation_from_fractions
from mrlearn.data.simulate.volume import center_crop_np, coil_maps, simulate_volume
from mrlearn.errors import input_error
from mrlearn.io import write_json

MANIFEST = "manifest.json"
SNR_SPREAD = 1.3  # acquisitions' SNR: log-uniform in [snr / 1.3, snr * 1.3] (coil loading, voxel size, tuning)
LESION_LABEL = TISSUE_INDEX["lesion"] + 1
_OWNED = {*SPLITS, MANIFEST, MANIFEST + ".tmp"}


def load_anatomy(options: SimulationOptions) -> Anatomy:
    """The anatomy named by the options (MNI on a 1 mm grid for pixels under 1.5 mm, else 2 mm)."""
    if options.anatomy == "phantom":
        return phantom_anatomy()
    return mni_anatomy(1 if options.pixel_mm < 1.5 else 2)


def load_manifest(root: str | Path) -> dict[str, Any]:
    """Read ``<root>/manifest.json``; a one-line error if it is missing or unreadable."""
    path = Path(root) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise input_error(path, "no dataset manifest here", "run `mrlearn simulate --out DIR` to make one") from None
    except (OSError, ValueError) as exc:
        raise input_error(path, f"unreadable manifest ({exc.__class__.__name__})", "delete the folder and simulate again") from None


def is_cached(root: str | Path, options: SimulationOptions) -> bool:
    """True when ``root`` holds a complete dataset made with exactly these options."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("options_hash") != options_hash(options):
        return False
    return all((root / f["path"]).is_file() for f in manifest.get("files", []))


def _versions(options: SimulationOptions) -> dict[str, str]:
    out = {"mrlearn": __version__, "simulator": SIMULATOR_VERSION, "python": platform.python_version()}
    names = ["numpy", "scipy", "h5py"] + (["nilearn"] if options.anatomy == "mni" else [])
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover - installed without metadata
            out[name] = "unknown"
    return out


def _check_out_dir(root: Path, options: SimulationOptions) -> None:
    if root.exists() and not root.is_dir():
        raise input_error(root, "exists and is not a folder", "choose a folder for --out")
    if not root.is_dir():
        return
    if (root / MANIFEST).is_file():
        try:
            old = json.loads((root / MANIFEST).read_text(encoding="utf-8")).get("options_hash")
        except (OSError, ValueError):
            old = None
        if old is not None and old != options_hash(options):
            raise input_error(root, f"holds an embedded dataset made with other options (hash {old})",
                              "choose another --out folder or delete this one")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in _OWNED)
    if foreign:
        raise input_error(root, f"is not empty and is not an mrlearn dataset (holds {foreign[0]})",
                          "choose an empty or new --out folder")


def simulate_dataset(out_dir: str | Path | None, options: SimulationOptions | None = None, *,
                     log: Callable[[str], None] | None = None) -> Path:
    """Make (or reuse) the embedded dataset in ``out_dir`` (None: :func:`default_cache_dir`); return its root."""
    options = options or SimulationOptions()
    root = Path(out_dir).expanduser() if out_dir is not None else default_cache_dir(options)
    say = log or (lambda _msg: None)
    if is_cached(root, options):
        say(f"reused the embedded dataset in {root} (options hash {options_hash(options)})")
        return root
    _check_out_dir(root, options)
    t0 = time.perf_counter()
    base = load_anatomy(options)
    layout = anatomy_layout(base)
    spacing = slice_spacing(layout, max(options.slices), options.pixel_mm)
    recon_hw, kspace_hw = tuple(options.matrix), options.kspace_hw
    try:
        for split in SPLITS:
            (root / split).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only or full disk, a file in the way
        raise input_error(root, f"cannot create the dataset folders ({exc.strerror or exc})",
                          "choose a writable --out folder") from None
    files: list[dict[str, Any]] = []
    subjects: list[dict[str, Any]] = []
    for split, index in subject_plan(options):
        subjects.append(_write_subject(root, options, base, layout, spacing, split, index, files))
        say(f"{subjects[-1]['subject_id']} ({split}) done")
    planned = {f["path"] for f in files}
    for split in SPLITS:  # stale files of an interrupted earlier run
        for p in (root / split).glob("*.h5"):
            if f"{split}/{p.name}" not in planned:
                p.unlink()
    elapsed = time.perf_counter() - t0
    manifest = {
        "dataset": "mrlearn-embedded",
        "options_hash": options_hash(options),
        "options": options.to_dict(),
        "seed": options.seed,
        "versions": _versions(options),
        "anatomy": base.name,
        "geometry": {
            "recon_hw": list(recon_hw), "kspace_hw": list(kspace_hw), "pixel_mm": options.pixel_mm,
            "slice_spacing_mm": spacing, "center_mm": list(layout.center_mm),
            "ranges_mm": {k: list(v) for k, v in layout.ranges.items()},
        },
        "protocols": {c: {"sequence": PROTOCOLS[c].sequence, "tr_ms": PROTOCOLS[c].tr_ms, "te_ms": PROTOCOLS[c].te_ms,
                          "ti_ms": PROTOCOLS[c].ti_ms, "fat_residual": PROTOCOLS[c].fat_residual}
                      for c in options.contrasts},
        "segmentation_labels": {str(k): v for k, v in SEGMENTATION_LABELS.items()},
        "counts": {s: sum(f["split"] == s for f in files) for s in SPLITS},
        "subjects": subjects,
        "files": files,
        "elapsed_s": round(elapsed, 3),
    }
    write_json(root / MANIFEST, manifest)
    say(f"made {len(subjects)} subjects, {len(files)} volumes "
        f"({', '.join(f'{s} {n}' for s, n in manifest['counts'].items())}) in {root} in {elapsed:.1f} s")
    return root


def subject_plan(options: SimulationOptions) -> list[tuple[str, int]]:
    """``(split, subject index)`` of every subject: consecutive indices from ``first_subject``, train first."""
    plan, k = [], options.first_subject
    for split, count in zip(SPLITS, options.subjects):
        plan += [(split, k + i) for i in range(count)]
        k += count
    return plan


def acquisition_snr(snr: float, rng: np.random.Generator, variation: bool) -> float:
    """One acquisition's SNR: log-uniform within a factor :data:`SNR_SPREAD` of ``snr`` (``snr`` itself without
    variation or when infinite)."""
    if not variation or math.isinf(snr):
        return float(snr)
    return float(snr * np.exp(rng.uniform(-np.log(SNR_SPREAD), np.log(SNR_SPREAD))))


def _write_subject(root: Path, options: SimulationOptions, base: Anatomy, layout: Layout, spacing: float, split: str,
                   index: int, files: list[dict[str, Any]]) -> dict[str, Any]:
    """Simulate and write every contrast of subject ``index``; append their file records; return its record."""
    subject = draw_subject(base, options.seed, index, variation=options.variation,
                           lesion_fraction=options.lesion_fraction)
    geo_rng = np.random.default_rng([options.seed, index, 1])
    orientation = options.orientations[index % len(options.orientations)]
    n_slices = options.slices[SPLITS.index(split)]
    slab = sample_slab(layout, orientation, n_slices, spacing, geo_rng)
    recon_hw, kspace_hw = tuple(options.matrix), options.kspace_hw
    pts = slab_points(layout, slab, kspace_hw, options.pixel_mm)
    fractions = subject.fractions(pts)  # [T, S, H, W], shared by every contrast: co-registered
    bias = subject.bias(pts)
    segmentation = np.ascontiguousarray(center_crop_np(segmentation_from_fractions(fractions), recon_hw))
    positions = np.asarray(slab.positions_mm)
    maps = coil_maps(kspace_hw, recon_hw, options.pixel_mm, options.coils, positions - positions.mean(), geo_rng)
    header = make_ismrmrd_header(kspace_hw, recon_hw, fov_mm=(kspace_hw[0] * options.pixel_mm,
                                                               kspace_hw[1] * options.pixel_mm, spacing))
    lesion_pixels = int((segmentation == LESION_LABEL).sum())
    for contrast in options.contrasts:
        rng = np.random.default_rng([options.seed, index, 4, CONTRASTS.index(contrast)])
        protocol = jittered(PROTOCOLS[contrast], rng, options.jitter)
        snr = acquisition_snr(options.snr, rng, options.variation)
        vol = simulate_volume(fractions, protocol, tissues=subject.tissues, bias=bias, positions_mm=positions,
                              recon_hw=recon_hw, pixel_mm=options.pixel_mm, coils=options.coils, snr=snr,
                              single_coil=options.single_coil, rng=rng, maps=maps)
        rel = f"{split}/{contrast}_{subject.subject_id}_{orientation}.h5"
        attrs: dict[str, Any] = {
            "simulator": f"mrlearn-embedded {SIMULATOR_VERSION}", "anatomy": base.name, "split": split,
            "subject": subject.subject_id, "orientation": orientation, "sequence": protocol.sequence,
            "tr_ms": protocol.tr_ms, "te_ms": protocol.te_ms, "snr": snr, "noise_std": vol.noise_std,
            "pixel_mm": options.pixel_mm, "slice_spacing_mm": spacing, "slice_positions_mm": positions,
        }
        if protocol.ti_ms is not None:
            attrs["ti_ms"] = protocol.ti_ms
        write_volume(root / rel, vol.kspace, target=vol.target, acquisition=contrast, patient_id=subject.subject_id,
                     header=header, attrs=attrs, sens_maps=vol.sens_maps if options.sens_maps else None,
                     noiseless=vol.target_noiseless, segmentation=segmentation,
                     segmentation_labels=SEGMENTATION_LABELS)
        files.append({
            "path": rel, "split": split, "subject": subject.subject_id, "acquisition": contrast,
            "orientation": orientation, "slices": n_slices, "slice_positions_mm": list(slab.positions_mm),
            "tr_ms": protocol.tr_ms, "te_ms": protocol.te_ms, "ti_ms": protocol.ti_ms, "snr": snr,
            "noise_std": vol.noise_std, "kspace_shape": list(vol.kspace.shape), "target_max": float(vol.target.max()),
            "lesion_pixels": lesion_pixels,
        })
    return {**subject.summary(), "index": index, "split": split, "orientation": orientation,
            "slices": n_slices, "lesion_pixels": lesion_pixels}


def default_dataset(options: SimulationOptions | None = None, *, log: Callable[[str], None] | None = None) -> Path:
    """The embedded dataset in the default cache (``$MRLEARN_DATA/embedded/<hash>`` or
    ``~/.cache/mrlearn/embedded/<hash>``), made on first use; returns its root."""
    return simulate_dataset(None, options or SimulationOptions(), log=log)
