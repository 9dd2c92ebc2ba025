"""``mrlearn simulate``: build (or reuse) the embedded multi-contrast dataset."""

from __future__ import annotations

import argparse

from mrlearn.data.simulate.contrasts import CONTRASTS, PROTOCOLS
from mrlearn.data.simulate.options import ANATOMIES, SimulationOptions

_D = SimulationOptions.__dataclass_fields__
_HELP = f"""Simulate fastMRI-format multi-coil k-space from the MNI ICBM152 2009 templates shipped in nilearn
(or a procedural phantom): one .h5 per volume under OUT/{{train,val,test}}/ plus OUT/manifest.json.
Contrasts: {', '.join(f'{c} ({p.sequence} TR {p.tr_ms:g} TE {p.te_ms:g}' + (f' TI {p.ti_ms:g}' if p.ti_ms else '') + ')'
                      for c, p in PROTOCOLS.items())} ms. The same options reuse an existing dataset."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("simulate", help="build the embedded simulated dataset", description=_HELP)
    p.add_argument("--out", default=None, help="dataset folder (default: $MRLEARN_DATA/embedded/<hash> or "
                                               "~/.cache/mrlearn/embedded/<hash>)")
    p.add_argument("--matrix", type=int, nargs=2, metavar=("H", "W"), default=list(_D["matrix"].default),
                   help="recon (target) size in pixels (default: 128 128)")
    p.add_argument("--slices", type=int, default=_D["slices"].default, help="slices per volume (default: 8)")
    p.add_argument("--volumes", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"), default=list(_D["volumes"].default),
                   help="volumes per contrast in each split (default: 12 3 3)")
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
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> SimulationOptions:
    """The :class:`SimulationOptions` given on the command line (validated: bad values raise MrlearnError)."""
    return SimulationOptions(
        matrix=tuple(args.matrix), slices=args.slices, volumes=tuple(args.volumes), contrasts=tuple(args.contrasts),
        coils=args.coils, snr=args.snr, oversample=args.oversample, single_coil=args.single_coil,
        anatomy=args.anatomy, fov_mm=args.fov, jitter=args.jitter, sens_maps=args.sens_maps, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from mrlearn.data.simulate.build import load_manifest, simulate_dataset

    options = options_from_args(args)
    root = simulate_dataset(args.out, options, log=lambda msg: print(f"mrlearn simulate: {msg}"))
    manifest = load_manifest(root)
    geo = manifest["geometry"]
    kind = "single-coil" if options.single_coil else f"{options.coils} coils"
    print(f"  anatomy {manifest['anatomy']}, {kind}, k-space {geo['kspace_hw'][0]} x {geo['kspace_hw'][1]}, "
          f"targets {geo['recon_hw'][0]} x {geo['recon_hw'][1]}, pixel {geo['pixel_mm']:.3g} mm, "
          f"slice spacing {geo['slice_spacing_mm']:.3g} mm, {options.slices} slices/volume, snr {options.snr:g}")
    for split in ("train", "val", "test"):
        files = [f for f in manifest["files"] if f["split"] == split]
        per = {c: sum(f["acquisition"] == c for f in files) for c in options.contrasts}
        print(f"  {split:5s} {len(files):4d} volumes in {root / split}  ({', '.join(f'{c} {n}' for c, n in per.items())})")
    print(f"  manifest {root / 'manifest.json'}")
    return 0
