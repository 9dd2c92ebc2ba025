"""Build the embedded dataset: one fastMRI-format HDF5 file per volume plus ``manifest.json``; cached.

Layout: ``<root>/{train,val,test}/<ACQ>_<nnn>_<orientation>.h5`` (each with ``reconstruction_noiseless``, the
target computed without noise, beside ``reconstruction_rss``) and ``<root>/manifest.json`` (options, options
hash, seed, versions, geometry, contrast protocols and every file with its split, acquisition, orientation and
slice positions). For each split and contrast ``volumes[split]`` volumes are made; volume ``i`` of contrast
``c`` uses orientation ``(i + c) mod 3`` and its own generator seeded by ``(seed, split, c, i)``, so every file
is determined by the options alone. A second call with the same options on a folder whose manifest has the same
options hash, with all files present, reuses it ("reused").
"""

from __future__ import annotations

import json
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
from mrlearn.data.simulate.slabs import ORIENTATIONS, anatomy_layout, sample_slab, slice_spacing, split_zones
from mrlearn.data.simulate.volume import simulate_volume
from mrlearn.errors import input_error
from mrlearn.io import write_json

MANIFEST = "manifest.json"
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
    anatomy = load_anatomy(options)
    layout = anatomy_layout(anatomy)
    spacing = slice_spacing(layout, options.slices, options.pixel_mm)
    recon_hw, kspace_hw = tuple(options.matrix), options.kspace_hw
    header = make_ismrmrd_header(kspace_hw, recon_hw, fov_mm=(kspace_hw[0] * options.pixel_mm,
                                                               kspace_hw[1] * options.pixel_mm, spacing))
    try:
        for split in SPLITS:
            (root / split).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only or full disk, a file in the way
        raise input_error(root, f"cannot create the dataset folders ({exc.strerror or exc})",
                          "choose a writable --out folder") from None
    files: list[dict[str, Any]] = []
    for s_idx, split in enumerate(SPLITS):
        for contrast in options.contrasts:
            c_idx = CONTRASTS.index(contrast)
            for i in range(options.volumes[s_idx]):
                rng = np.random.default_rng([options.seed, s_idx, c_idx, i])
                orientation = ORIENTATIONS[(i + c_idx) % len(ORIENTATIONS)]
                slab = sample_slab(layout, orientation, split, options.slices, spacing, rng)
                protocol = jittered(PROTOCOLS[contrast], rng, options.jitter)
                vol = simulate_volume(anatomy, layout, slab, protocol, recon_hw=recon_hw, kspace_hw=kspace_hw,
                                      pixel_mm=options.pixel_mm, coils=options.coils, snr=options.snr,
                                      single_coil=options.single_coil, rng=rng)
                rel = f"{split}/{contrast}_{i:03d}_{orientation}.h5"
                attrs: dict[str, Any] = {
                    "simulator": f"mrlearn-embedded {SIMULATOR_VERSION}", "anatomy": anatomy.name, "split": split,
                    "orientation": orientation, "sequence": protocol.sequence, "tr_ms": protocol.tr_ms,
                    "te_ms": protocol.te_ms, "snr": float(options.snr), "noise_std": vol.noise_std,
                    "pixel_mm": options.pixel_mm, "slice_spacing_mm": spacing,
                    "slice_positions_mm": np.asarray(slab.positions_mm), "rot90": slab.rot90, "flip": int(slab.flip),
                }
                if protocol.ti_ms is not None:
                    attrs["ti_ms"] = protocol.ti_ms
                write_volume(root / rel, vol.kspace, target=vol.target, acquisition=contrast,
                             patient_id=f"{anatomy.name}:{orientation}:{split}", header=header, attrs=attrs,
                             sens_maps=vol.sens_maps if options.sens_maps else None, noiseless=vol.target_noiseless)
                files.append({
                    "path": rel, "split": split, "acquisition": contrast, "orientation": orientation,
                    "slices": options.slices, "slice_positions_mm": list(slab.positions_mm), "rot90": slab.rot90,
                    "flip": slab.flip, "shift_mm": list(slab.shift_mm), "tr_ms": protocol.tr_ms,
                    "te_ms": protocol.te_ms, "ti_ms": protocol.ti_ms, "noise_std": vol.noise_std,
                    "kspace_shape": list(vol.kspace.shape), "target_max": float(vol.target.max()),
                })
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
        "anatomy": anatomy.name,
        "geometry": {
            "recon_hw": list(recon_hw), "kspace_hw": list(kspace_hw), "pixel_mm": options.pixel_mm,
            "slice_spacing_mm": spacing, "center_mm": list(layout.center_mm),
            "ranges_mm": {k: list(v) for k, v in layout.ranges.items()},
            "zones_mm": {o: {s: [list(z) for z in split_zones(layout, o, s, spacing)] for s in SPLITS}
                         for o in ORIENTATIONS},
        },
        "protocols": {c: {"sequence": PROTOCOLS[c].sequence, "tr_ms": PROTOCOLS[c].tr_ms, "te_ms": PROTOCOLS[c].te_ms,
                          "ti_ms": PROTOCOLS[c].ti_ms, "fat_residual": PROTOCOLS[c].fat_residual}
                      for c in options.contrasts},
        "counts": {s: sum(f["split"] == s for f in files) for s in SPLITS},
        "files": files,
        "elapsed_s": round(elapsed, 3),
    }
    write_json(root / MANIFEST, manifest)
    say(f"made {len(files)} volumes ({', '.join(f'{s} {n}' for s, n in manifest['counts'].items())}) "
        f"in {root} in {elapsed:.1f} s")
    return root


def default_dataset(options: SimulationOptions | None = None, *, log: Callable[[str], None] | None = None) -> Path:
    """The embedded dataset in the default cache (``$MRLEARN_DATA/embedded/<hash>`` or
    ``~/.cache/mrlearn/embedded/<hash>``), made on first use; returns its root."""
    return simulate_dataset(None, options or SimulationOptions(), log=log)
