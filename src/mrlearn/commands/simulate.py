"""``mrlearn simulate``: build (or reuse) the embedded multi-contrast dataset, or simulate k-space from user images."""

from __future__ import annotations

import argparse

from mrlearn.data.simulate.contrasts import CONTRASTS, PROTOCOLS
from mrlearn.data.simulate.options import ANATOMIES, SimulationOptions

_D = SimulationOptions.__dataclass_fields__
_HELP = f"""Simulate a population of subjects from the MNI ICBM152 2009 templates shipped in nilearn (or a procedural
phantom): each subject its own deformation, head pose and size, fine structure, tissue parameters, receive bias,
coils, noise level and (in some) white-matter lesions; every contrast of a subject co-registered. One fastMRI .h5
per subject and contrast (k-space, targets, tissue segmentation, patient_id) under OUT/{{train,val,test}}/ (disjoint
subjects) plus OUT/manifest.json.
Contrasts: {', '.join(f'{c} ({p.sequence} TR {p.tr_ms:g} TE {p.te_ms:g}' + (f' TI {p.ti_ms:g}' if p.ti_ms else '') + ')'
                      for c, p in PROTOCOLS.items())} ms. The same options reuse an existing dataset.
With --from-images PATH (NIfTI magnitude/complex, BART coil-combined image .cfl, or fastMRI files' targets; a file or
a folder), the user's images go through the same coil, phase, noise and oversampling model instead and are written
as OUT/<name>.h5 (fastMRI format, targets reconstruction_rss and reconstruction_noiseless), ready for train/study."""
_EMBEDDED_ONLY = ("matrix", "slices", "subjects", "orientations", "first_subject", "lesion_fraction", "variation",
                  "contrasts", "anatomy", "jitter")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("simulate", help="build the embedded simulated dataset", description=_HELP)
    p.add_argument("--out", default=None, help="dataset folder (default: $MRLEARN_DATA/embedded/<hash> or "
                                               "~/.cache/mrlearn/embedded/<hash>)")
    p.add_argument("--matrix", type=int, nargs=2, metavar=("H", "W"), default=list(_D["matrix"].default),
                   help="recon (target) size in pixels (default: 128 128)")
    p.add_argument("--subjects", type=int, nargs="+", metavar="N", default=list(_D["subjects"].default),
                   help="subjects: N (split about 46/15/38 %%) or TRAIN VAL TEST (default: 12 4 10)")
    p.add_argument("--slices", type=int, nargs="+", metavar="S", default=list(_D["slices"].default),
                   help="slices per subject: S, or TRAIN VAL TEST (default: 8 6 4)")
    p.add_argument("--orientations", nargs="+", metavar="O", default=list(_D["orientations"].default),
                   help="slab orientations, assigned to subjects in turn (default: axial coronal sagittal)")
    p.add_argument("--first-subject", dest="first_subject", type=int, default=_D["first_subject"].default,
                   help="index of the first subject (another population of the same seed; default: 0)")
    p.add_argument("--lesions", dest="lesion_fraction", type=float, default=_D["lesion_fraction"].default,
                   help="fraction of subjects with white-matter lesions (default: 0.2)")
    p.add_argument("--no-variation", dest="variation", action="store_false",
                   help="every subject the unmodified template (only slab, coils and noise vary)")
    p.add_argument("--contrasts", nargs="+", metavar="ACQ", default=list(CONTRASTS),
                   help=f"contrasts (acquisition names) to make (default: {' '.join(CONTRASTS)})")
    p.add_argument("--coils", type=int, default=_D["coils"].default, help="receive coils (default: 8)")
    p.add_argument("--snr", type=float, default=_D["snr"].default,
                   help="mean object RSS signal / noise std per coil and k-space sample; 'inf' for none (default: 30)")
    p.add_argument("--oversample", action="store_true", help="2x readout oversampling (k-space H = 2 x recon H)")
    p.add_argument("--single-coil", action="store_true", help="single-coil k-space with reconstruction_esc targets")
    p.add_argument("--anatomy", choices=ANATOMIES, default=_D["anatomy"].default, help="mni (default) or phantom")
    p.add_argument("--fov", type=float, default=_D["fov_mm"].default, help="field of view of the longer side, mm (default: 240)")
    p.add_argument("--jitter", type=float, default=_D["jitter"].default, help="relative TR/TE jitter per volume (default: 0.05)")
    p.add_argument("--sens-maps", action="store_true", help="also store the true coil maps as 'sens_maps'")
    p.add_argument("--seed", type=int, default=_D["seed"].default, help="random seed (default: 0)")
    p.add_argument("--from-images", default=None, metavar="PATH",
                   help="simulate k-space from these images (file or folder: .nii/.nii.gz, BART .cfl, fastMRI .h5 targets)")
    p.add_argument("--acquisition", default=None,
                   help="with --from-images: acquisition name stored in the files (default: the input's, else UNKNOWN)")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> SimulationOptions:
    """The :class:`SimulationOptions` given on the command line (validated: bad values raise MrlearnError)."""
    return SimulationOptions(
        matrix=tuple(args.matrix), slices=tuple(args.slices), subjects=tuple(args.subjects),
        orientations=tuple(args.orientations), first_subject=args.first_subject,
        lesion_fraction=args.lesion_fraction, variation=args.variation, contrasts=tuple(args.contrasts),
        coils=args.coils, snr=args.snr, oversample=args.oversample, single_coil=args.single_coil,
        anatomy=args.anatomy, fov_mm=args.fov, jitter=args.jitter, sens_maps=args.sens_maps, seed=args.seed)


def run_from_images(args: argparse.Namespace) -> int:
    """``--from-images``: the user's images through the acquisition model (see data/simulate/from_images.py)."""
    from mrlearn.data.simulate.from_images import simulate_from_images
    from mrlearn.errors import input_error

    if args.out is None:
        raise input_error("--out", "required with --from-images", "give the folder for the simulated .h5 files")
    for name in _EMBEDDED_ONLY:
        if getattr(args, name) != (list(_D[name].default) if isinstance(_D[name].default, tuple) else _D[name].default):
            raise input_error(f"--{name}", "applies to the embedded dataset only, not to --from-images",
                              "drop it (the images give the matrix and slices)")
    written = simulate_from_images(args.from_images, args.out, acquisition=args.acquisition, coils=args.coils,
                                   snr=args.snr, oversample=args.oversample, single_coil=args.single_coil,
                                   seed=args.seed, fov_mm=args.fov, sens_maps=args.sens_maps,
                                   log=lambda msg: print(f"mrlearn simulate: {msg}"))
    print(f"mrlearn simulate: wrote {len(written)} file(s) to {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from mrlearn.data.simulate.build import load_manifest, simulate_dataset

    if args.from_images is not None:
        return run_from_images(args)
    if args.acquisition is not None:
        from mrlearn.errors import input_error

        raise input_error("--acquisition", "only used with --from-images", "the embedded dataset names its contrasts")

    options = options_from_args(args)
    root = simulate_dataset(args.out, options, log=lambda msg: print(f"mrlearn simulate: {msg}"))
    manifest = load_manifest(root)
    geo = manifest["geometry"]
    kind = "single-coil" if options.single_coil else f"{options.coils} coils"
    print(f"  anatomy {manifest['anatomy']}, {kind}, k-space {geo['kspace_hw'][0]} x {geo['kspace_hw'][1]}, "
          f"targets {geo['recon_hw'][0]} x {geo['recon_hw'][1]}, pixel {geo['pixel_mm']:.3g} mm, "
          f"slice spacing {geo['slice_spacing_mm']:.3g} mm, median snr {options.snr:g}")
    for line in population_summary(manifest):
        print(f"  {line}")
    print(f"  manifest {root / 'manifest.json'}")
    return 0


def population_summary(manifest: dict) -> list[str]:
    """Lines describing the population of a dataset manifest: subjects and files per split, then the range of each
    subject parameter."""
    subjects, files = manifest.get("subjects", []), manifest.get("files", [])
    lines = []
    for split in ("train", "val", "test"):
        subs = [s for s in subjects if s["split"] == split]
        n_files = sum(f["split"] == split for f in files)
        ids = f"{subs[0]['subject_id']}..{subs[-1]['subject_id']}" if subs else "-"
        orient = ", ".join(f"{o} {sum(s['orientation'] == o for s in subs)}" for o in sorted({s["orientation"] for s in subs}))
        lines.append(f"{split:5s} {len(subs):3d} subjects ({ids}; {orient or 'none'}), {n_files} volumes")
    if not subjects:
        return lines

    def span(key: str, fmt: str = ".2f") -> str:
        vals = [float(s[key]) for s in subjects]
        return f"{min(vals):{fmt}}-{max(vals):{fmt}}"

    lines.append(f"displacement over the brain: RMS {span('rms_displacement_mm')} mm, max {span('max_displacement_mm')} mm; "
                 f"Jacobian {span('jacobian_min', '.2f')}..{span('jacobian_max', '.2f')} (min..max ranges)")
    lines.append(f"ventricle wall shift {span('ventricle_shift_mm')} mm, ventricle volume / template's "
                 f"{span('ventricle_volume_ratio')}; head scale "
                 f"{min(min(s['scale']) for s in subjects):.3f}-{max(max(s['scale']) for s in subjects):.3f}; "
                 f"rotation up to {max(max(abs(a) for a in s['rotation_deg']) for s in subjects):.1f} deg; "
                 f"bias peak {span('bias_peak')}")
    with_lesions = [s for s in subjects if s["lesions"]]
    lines.append(f"lesions in {len(with_lesions)} of {len(subjects)} subjects "
                 f"({sum(s['lesion_pixels'] > 0 for s in with_lesions)} with lesion pixels in their slab)")
    for tissue in ("gm", "wm", "csf"):
        t1 = [s["tissues"][tissue]["t1_ms"] for s in subjects]
        t2 = [s["tissues"][tissue]["t2_ms"] for s in subjects]
        lines.append(f"{tissue}: T1 {min(t1):.0f}-{max(t1):.0f} ms, T2 {min(t2):.1f}-{max(t2):.1f} ms")
    if files:
        snr = [f["snr"] for f in files]
        lines.append(f"acquisition snr {min(snr):.1f}-{max(snr):.1f}")
    return lines
