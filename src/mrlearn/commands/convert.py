"""``mrlearn convert``: BART ``.cfl/.hdr`` k-space (+ sensitivity maps) <-> fastMRI-format HDF5 volumes."""

from __future__ import annotations

import argparse

from mrlearn.data.bart_layout import DIM2_CHOICES
from mrlearn.data.convert import convert_path

_HELP = """Convert BART k-space to fastMRI-format .h5 (one volume per file) or back; the direction follows INPUT.
BART k-space dims: [readout, phase, 1, coils, ..., slices at dim 13] -> kspace [slices, coils, readout, phase];
[1, ky, kz, coils] (a slice of a 3-D acquisition) is one ky x kz slice; coils in dim 4 are taken as coils. With
several entries in dim 2 the data say whether it is a k-space partition axis (3-D k-space: inverse FFT along it,
centred and orthonormal, one kx x ky slice per partition) or image-space slices; where they cannot (one coil, or
ambiguous evidence) --dim2 says it (a note says what was done). A folder is converted file by file; NAME_maps
beside NAME is taken as its sensitivity maps. --undersampled stores the sampling pattern found in the data
(1-D columns or 2-D, e.g. Poisson-disc) as 'mask' with its acceleration and calibration size."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="BART .cfl/.hdr <-> fastMRI .h5", description=_HELP)
    p.add_argument("input", help="BART k-space (base name, .cfl or .hdr), a fastMRI .h5, or a folder of either")
    p.add_argument("output", help="output file (.h5 or BART base name) or folder")
    p.add_argument("--maps", default=None, help="BART sensitivity maps for the k-space (a folder of NAME maps for a folder input)")
    p.add_argument("--acquisition", default="BART", help="acquisition (contrast) name stored in the .h5 attrs (default: BART)")
    p.add_argument("--patient-id", default="", help="patient_id attr (default: the input's base name)")
    p.add_argument("--undersampled", action="store_true",
                   help="k-space is undersampled: store where the data are non-zero (any coil) as 'mask' ([W] or 2-D [H, W]) "
                        "and no target (test-file style)")
    p.add_argument("--dim2", choices=DIM2_CHOICES, default=None,
                   help="what BART dim 2 holds when it has several entries: kspace (3-D partitions), slices (image-space "
                        "slices) or coils (dim 3 empty); default: read from the data, refused where it cannot tell")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    written = convert_path(args.input, args.output, maps=args.maps, acquisition=args.acquisition,
                           patient_id=args.patient_id, undersampled=args.undersampled, dim2=args.dim2,
                           log=lambda msg: print(f"mrlearn convert: note: {msg}"))
    for path in written:
        print(path)
    print(f"mrlearn convert: wrote {len(written)} file(s)")
    return 0
