"""What needs a GPU, measured through mrlearn's own trainer in one command (about 8 minutes); prints one table.

    python benchmarks/gpu_check.py --fastmri-path ~/src/fastMRI      # the default parts, within --budget
    python benchmarks/gpu_check.py --only unet --steps 50              # one part
    python benchmarks/gpu_check.py --device cpu --tiny                 # every part for a few steps on the CPU

Every training figure is a fit by ``mrlearn.training.runner.train`` (simulated fastMRI data on disk, the data
module and its loader workers, ``make_trainer``, the method's training step) with a timing callback; see
``gpu_check_runs.py`` for what is timed (steady-state steps after a warm-up, synchronised). TF32 is set and reported
explicitly for every run (``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``).

Parts (``--only`` picks some; the default is every part but ``presets``):
  ``unet``      U-Net (32 channels, 4 poolings; ``unet_demo``) at ``--size`` with batch ``--batch``: fp32 with TF32
                off, fp32 with TF32 on, bf16-mixed; images/s, ms/step, peak CUDA memory, validation SSIM after the
                same steps. With ``--fastmri-path`` (your fastMRI checkout, or its ``fastmri/models/unet.py``;
                nothing of it is shipped here) fastMRI's own U-Net is registered as a model and trained by the same
                trainer on the same data, fp32 with TF32 off and on: ``x fastMRI`` is ours over it at equal settings.
  ``unrolled``  the ``unrolled_varnet`` network (12 cascades, U-Net regularisers, 8 coils) with and without
                gradient checkpointing: ms/step and peak memory.
  ``convex``    one convex layer-wise block (gated, 128 sign patterns, 7 x 7 x 2 patches, ``--convex-rows`` rows)
                solved by FISTA to 1e-6 on the GPU, then on the CPU as far as the budget allows (the time per
                iteration is compared), then the GPU at the ``layerwise_study_gpu`` size (96 000 rows).
  ``scaling``   DDP at a fixed per-GPU batch: the U-Net fit on 1 GPU and on every visible GPU (``--batch`` each);
                images/s in all, per GPU, and the efficiency (per-GPU throughput over the 1-GPU one). Skipped, and
                said so, with fewer than 2 GPUs.
  ``presets``   (only when asked) the first ``--preset-minutes`` minutes of each shipped ``*_gpu`` study preset.

``--budget`` seconds (default 420) are shared by the parts asked for (unet 4, unrolled 2.5, convex 1.5, scaling 2,
presets 4 shares; time a part leaves goes to the later ones); each fit stops at its part's deadline
(``trainer.max_time``), and a run that no longer fits is skipped and listed under the table. Without a CUDA GPU
(and without ``--device cpu``) it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS = ("unet", "unrolled", "convex", "scaling", "presets")
DEFAULT_PARTS = ("unet", "unrolled", "convex", "scaling")
SHARES = {"unet": 4.0, "unrolled": 2.5, "convex": 1.5, "scaling": 2.0, "presets": 4.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " See the module docstring for the parts.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fastmri-path", help="fastMRI checkout (root) or its fastmri/models/unet.py: reference U-Net")
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(DEFAULT_PARTS),
                   help="parts to run (default: all but presets)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds shared by the parts (default 420)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (default) or cpu: a check of every code path, not a measurement")
    p.add_argument("--tiny", action="store_true", help="tiny sizes and 2 timed steps per run (a quick check)")
    p.add_argument("--batch", type=int, default=8, help="U-Net batch per device (default 8)")
    p.add_argument("--size", type=int, default=320, help="image size (square; default 320, fastMRI's crop)")
    p.add_argument("--steps", type=int, default=30, help="timed U-Net steps per setting (after --warmup steps)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--workers", type=int, default=4, help="data loader worker processes (default 4)")
    p.add_argument("--convex-rows", type=int, default=20000, help="patch rows of the GPU vs CPU convex solve")
    p.add_argument("--preset-minutes", type=float, default=3.0, help="minutes given to each _gpu study preset")
    p.add_argument("--out", help="folder for the data and runs (default: a temporary folder)")
    p.add_argument("--scaling-worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> SimpleNamespace:
    """Sizes of every part: the defaults (fastMRI-size) or ``--tiny`` ones."""
    o = SimpleNamespace(accelerator="gpu" if args.device == "cuda" else "cpu", tiny=args.tiny, batch=args.batch,
                        size=args.size, steps=args.steps, warmup=args.warmup, workers=args.workers, chans=32,
                        pools=4, coils=4, train_subjects=4, slices=16, cascades=12, unrolled_chans=18,
                        unrolled_coils=8, unrolled_size=320, unrolled_steps=5, convex_rows=args.convex_rows,
                        min_run_s=20.0)
    if args.tiny:
        o.__dict__.update(batch=2, size=32, steps=2, warmup=1, workers=0, chans=4, pools=2, coils=2,
                          train_subjects=2, slices=3, cascades=2, unrolled_chans=4, unrolled_coils=2,
                          unrolled_size=32, unrolled_steps=2, convex_rows=300, min_run_s=0.0)
    return o


def no_gpu() -> str | None:
    """One line saying why nothing can be measured, or None when a CUDA GPU is visible."""
    try:
        import torch
    except ImportError:
        return "gpu_check: torch is not installed; nothing to measure"
    if not torch.cuda.is_available():
        return "gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); nothing to measure"
    return None



# --- fastMRI reference U-Net -------------------------------------------------------------------------------------

def load_fastmri_unet(path: str) -> Any:
    """The ``Unet`` class of a fastMRI checkout (root folder or the ``unet.py`` file), imported from that file."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_file() else [p / "fastmri" / "models" / "unet.py", p / "models" / "unet.py", p / "unet.py"]
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        raise SystemExit(f"gpu_check: --fastmri-path {path}: no fastmri/models/unet.py there")
    spec = importlib.util.spec_from_file_location("fastmri_reference_unet", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Unet


def preset_rows(args: argparse.Namespace, work: Path, deadline: float) -> tuple[list[dict[str, Any]], list[str]]:
    """The first minutes of each shipped ``*_gpu`` study preset (``mrlearn study NAME``), within the part budget."""
    from importlib.resources import files

    presets = sorted(p.name[:-5] for p in (files("mrlearn") / "configs").iterdir() if p.name.endswith("_gpu.yaml"))
    rows, skipped = [], []
    for i, name in enumerate(presets):
        limit = min(60 * args.preset_minutes, (deadline - time.monotonic()) / (len(presets) - i))
        if limit < 30:
            skipped.append(f"preset {name} (part budget spent)")
            continue
        out = work / name
        t0 = time.perf_counter()
        try:
            res = subprocess.run([sys.executable, "-m", "mrlearn.cli", "study", name, "--out", str(out)],
                                 capture_output=True, text=True, timeout=limit)
            code, text = res.returncode, res.stdout + res.stderr
        except subprocess.TimeoutExpired as exc:
            code, text = 124, exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        done = len(list(out.glob("runs/*/result.json")))
        last = next((ln for ln in reversed(text.strip().splitlines()) if ln.strip()), "")
        state = "finished" if code == 0 else "stopped at the time limit" if code == 124 else f"exit {code}"
        rows.append({"check": "_gpu preset", "setting": name, "seconds": time.perf_counter() - t0, "runs done": done,
                     "note": f"{state}; {last[:120]}"})
    return rows, skipped


# --- table ----------------------------------------------------------------------------------------------------------

COLUMNS = ("check", "setting", "images/s", "ms/step", "peak MiB", "x fastMRI", "images/s/GPU", "efficiency", "SSIM",
           "seconds", "runs done", "note")


def format_table(rows: list[dict[str, Any]]) -> str:
    """One plain-text table of every row (missing cells blank, floats with 4 significant digits)."""
    cols = [c for c in COLUMNS if any(c in r for r in rows)]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def run_part(part: str, args: argparse.Namespace, o: SimpleNamespace, work: Path,
             deadline: float) -> tuple[list[dict[str, Any]], list[str]]:
    """One part's rows and the runs it skipped; an error becomes a ``failed`` row, the other parts still run."""
    import gpu_check_runs as runs

    try:
        if part == "unet":
            ref = load_fastmri_unet(args.fastmri_path) if args.fastmri_path else None
            return runs.unet_rows(o, work, deadline, ref)
        if part == "unrolled":
            return runs.unrolled_rows(o, work, deadline)
        if part == "convex":
            return runs.convex_rows(o, deadline)
        if part == "scaling":
            return runs.scaling_rows(o, work, deadline)
        return preset_rows(args, work, deadline)
    except Exception as exc:  # noqa: BLE001 - one part failing must not hide the others' figures
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return [{"check": part, "setting": "-", "note": f"failed: {type(exc).__name__}: {first[:200]}"}], []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE))
    if args.scaling_worker:
        import gpu_check_runs as runs

        return runs.scaling_worker(json.loads(args.scaling_worker))
    if args.device == "cuda":
        why = no_gpu()
        if why is not None:
            print(why)
            return 0
    import torch

    from mrlearn.engine.trainer import quiet_lightning

    quiet_lightning()
    start = time.monotonic()
    o = options(args)
    what = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if args.device == "cuda"
            else "CPU (a check of the code paths; TF32 has no effect there)")
    print(f"gpu_check: {what}, torch {torch.__version__}, budget {args.budget:.0f} s, parts {' '.join(args.only)}"
          f"{', tiny sizes' if args.tiny else ''}", flush=True)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    parts = [p for p in PARTS if p in args.only]
    rows: list[dict[str, Any]] = []
    skipped = [f"{p} (not asked for; --only {p})" for p in PARTS if p not in parts]
    end = start + args.budget
    for i, part in enumerate(parts):
        left = end - time.monotonic()
        share = SHARES[part] / sum(SHARES[p] for p in parts[i:])
        t0 = time.monotonic()
        got, missed = run_part(part, args, o, work, t0 + max(0.0, left) * share)
        rows += got
        skipped += missed
        print(f"gpu_check: {part} done in {time.monotonic() - t0:.0f} s", flush=True)
    print(format_table(rows))
    for line in skipped:
        print(f"skipped: {line}")
    print(f"gpu_check: {time.monotonic() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
