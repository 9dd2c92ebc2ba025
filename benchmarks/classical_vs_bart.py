"""ESPIRiT and classical reconstructions vs BART, side by side: times and PSNR on simulated multi-coil slices.

Part 1 (the default): mrlearn's own 2-D Poisson-disc mask (4x, 16 x 16 calibration box); each side with its own
defaults end to end, start-up included -- ours one ``mrlearn reconstruct --method M`` process on a fastMRI file
carrying the mask (ESPIRiT maps from the data + the solver; the in-process time of ``mrlearn.recon.reconstruct``
is printed beside it) vs the two processes ``bart ecalib -m1 -r 16`` + ``bart pics -S`` (-l2 -r 0.01, -l1 -r
0.005, -R T:3:0:0.002) on the same k-space; PSNR against the fully sampled SENSE combination with BART's maps;
time and PSNR side by side and the ratios (ours / BART). Both sides run with ``OMP_NUM_THREADS = --threads``;
the load average is printed (the machine may be shared). Part 2 (``--matched``): the older comparison below on
a 1-D mask with identical maps and absolute weights.

Cases: an 8-coil 230 x 180 slice and a 15-coil 640 x 368 slice (BART phantom k-space with BART's simulated coils;
beyond 8 coils, which ``bart phantom`` cannot simulate, the phantom image times ``simulate_coil_maps``), plus
noise, 1-D random column mask R~4 with 8 % centre). For each: ESPIRiT vs ``bart ecalib -m1``; CG-SENSE (``pics
-l2``), L1-wavelet CS (``pics -l1 -n``, db2 = BART's dau2), TV (``pics -R T:3:0``, ours isotropic) and anisotropic
TV (``pics -R T:1:0 -R T:2:0``, ours ``anisotropic=True``) with the same maps and absolute weights; our iterations
are the fewest (from a short list) that reach BART's PSNR within 0.2 dB.
Times: wall seconds, best of ``--repeat``.

    python benchmarks/classical_vs_bart.py [--threads 2] [--repeat 2] [--small-only] [--matched]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `mrlearn reconstruct --method` (set before torch loads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mrlearn.physics.coils import simulate_coil_maps
from mrlearn.physics.espirit import espirit_sens_maps
from mrlearn.physics.fft import fft2c, ifft2c
from mrlearn.physics.sense import sense_adjoint
from mrlearn.recon import bart
from mrlearn.recon.cg_sense import cg_sense
from mrlearn.recon.cs import absolute_lambda, cs_l1_wavelet
from mrlearn.recon.tv import tv_recon


def simulate(h: int, w: int, coils: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fully sampled k-space ``[C, H, W]`` from ``bart phantom`` (square, columns centre-cropped) and a mask ``[W]``."""
    n = max(h, w)
    sim = coils if coils <= 8 else 1  # bart phantom simulates at most 8 coils; more come from simulate_coil_maps
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["bart", "phantom", "-x", str(n), "-s", str(sim), "-k", "ph"], cwd=tmp, check=True,
                       capture_output=True)
        k = bart.read_cfl(Path(tmp) / "ph")
    k = np.transpose(k.reshape(n, n, sim), (2, 0, 1))
    k = k[:, (n - h) // 2:(n - h) // 2 + h, (n - w) // 2:(n - w) // 2 + w]
    if sim != coils:
        img = ifft2c(torch.from_numpy(k.astype(np.complex64)))[0]
        maps = torch.from_numpy(simulate_coil_maps((h, w), coils, rng=seed).astype(np.complex64))
        k = fft2c(maps * img).numpy()
    rng = np.random.default_rng(seed)
    k = k + 0.002 * np.abs(k).max() * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    mask = (rng.random(w) < 0.22).astype(np.float32)
    nl = round(0.08 * w)
    mask[w // 2 - nl // 2: w // 2 - nl // 2 + nl] = 1
    return k.astype(np.complex64), mask


def best_time(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def psnr(gt: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(gt.max() ** 2 / np.mean((np.abs(x) - gt) ** 2)))


def run_case(name: str, h: int, w: int, coils: int, threads: int, repeat: int) -> None:
    k, mask = simulate(h, w, coils)
    ku = k * mask
    kt = torch.from_numpy(ku)[None]
    mt = torch.from_numpy(mask).reshape(1, 1, 1, w)
    print(f"\n== {name}: {coils} coils, {h} x {w}, {int(mask.sum())}/{w} columns ==")
    ours_maps, t_ours = best_time(lambda: espirit_sens_maps(kt), repeat)
    (bart_maps, t_bart) = min((bart.ecalib(ku, threads=threads) for _ in range(repeat)), key=lambda r: r[1])
    ip = np.abs((ours_maps[0].numpy().conj() * bart_maps).sum(0))
    both = (np.linalg.norm(bart_maps, axis=0) > 0) & (np.linalg.norm(ours_maps[0].numpy(), axis=0) > 0)
    print(f"ESPIRiT   ours {t_ours:7.3f} s   bart ecalib {t_bart:7.3f} s   ratio {t_ours / t_bart:5.2f}"
          f"   |<s_ours, s_bart>| where both kept: median {np.median(ip[both]):.4f}, 1st percentile "
          f"{np.percentile(ip[both], 1):.4f}")
    st = torch.from_numpy(bart_maps)[None]
    gt = sense_adjoint(torch.from_numpy(k)[None], st).abs()[0].numpy()
    lam_cs = float(absolute_lambda(kt, mt, st, 0.005)[0])  # BART's data scaling (lambda_convention "bart")
    lam_tv = float(absolute_lambda(kt, mt, st, 0.002)[0])
    cases = [
        ("CG-SENSE", ["-l2", "-r", "0.01"], [], 100, lambda n: cg_sense(kt, mt, st, lam=0.01, max_iter=n, tol=0),
         [10, 20, 30, 50, 100]),
        ("CS-L1", ["-l1", "-r", f"{lam_cs:.6g}"], ["-n"], 100,
         lambda n: cs_l1_wavelet(kt, mt, st, lam=0.005, max_iter=n, random_shift=False), [20, 40, 60, 100, 150]),
        ("TV", ["-R", f"T:3:0:{lam_tv:.6g}"], [], 100, lambda n: tv_recon(kt, mt, st, lam=0.002, max_iter=n),
         [10, 20, 30, 50, 100]),
        ("TV-aniso", ["-R", f"T:1:0:{lam_tv:.6g}", "-R", f"T:2:0:{lam_tv:.6g}"], [], 100,
         lambda n: tv_recon(kt, mt, st, lam=0.002, max_iter=n, anisotropic=True), [10, 20, 30, 50, 100]),
    ]
    for label, reg, extra, iters, ours_fn, grid in cases:
        (img_b, t_b) = min((bart.pics(ku, bart_maps, reg, iters, extra, threads=threads) for _ in range(repeat)),
                           key=lambda r: r[1])
        target = psnr(gt, img_b)
        for n in grid:
            img_o, t_o = best_time(lambda: ours_fn(n)[0].numpy(), repeat)
            if psnr(gt, img_o) >= target - 0.2:
                break
        print(f"{label:9s} ours {t_o:7.3f} s ({n:3d} it, {psnr(gt, img_o):6.2f} dB)   bart pics {t_b:7.3f} s "
              f"({iters} it, {target:6.2f} dB)   ratio {t_o / t_b:5.2f}")


def poisson_mask(h: int, w: int, acceleration: float = 4.0, seed: int = 0) -> np.ndarray:
    """mrlearn's Poisson-disc mask ``[H, W]`` (16 x 16 calibration box) through the registry."""
    from mrlearn import registry

    mask_func = registry.build("mask", {"name": "poisson", "accelerations": [acceleration]}, "mask")
    try:
        out = mask_func((h, w), seed=seed)
    except TypeError:  # the older call convention (shape, rng)
        out = mask_func((h, w), np.random.default_rng(seed))
    out = out[0] if isinstance(out, tuple) else out
    return np.asarray(out, dtype=np.float32).reshape(h, w)


def _process_time(cmd: list[str], threads: int, cwd: Path, repeat: int) -> float:
    """Best wall time of ``repeat`` runs of a fresh process (start-up included), ``OMP_NUM_THREADS=threads``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def run_defaults(name: str, h: int, w: int, coils: int, threads: int, repeat: int) -> None:
    """Each side with its own defaults end to end on a 2-D Poisson mask, maps from the data included.

    Ours: ``mrlearn reconstruct --method M`` on a fastMRI file carrying the mask (one process: Python and torch
    start-up, reading, ESPIRiT, solver, writing). BART: ``bart ecalib -m1 -r 16`` then ``bart pics -S`` (two
    processes) on the same k-space as ``.cfl``. Both with ``OMP_NUM_THREADS=threads``; best of ``repeat``.
    """
    from mrlearn.data.fastmri import read_reconstruction
    from mrlearn.data.fastmri_write import write_volume
    from mrlearn.recon import reconstruct

    k, _ = simulate(h, w, coils)
    mask = poisson_mask(h, w)
    ku = (k * mask).astype(np.complex64)
    print(f"\n== {name}: {coils} coils, {h} x {w}, Poisson 2-D mask R = {mask.size / mask.sum():.2f} ==")
    mrlearn = [sys.executable, "-m", "mrlearn.cli"] if shutil.which("mrlearn") is None else [shutil.which("mrlearn")]
    with tempfile.TemporaryDirectory(prefix="mrlearn_vs_bart_") as tmp:
        tmp = Path(tmp)
        write_volume(tmp / "data" / "slice.h5", ku[None], acquisition="BART", mask=mask.astype(bool),
                     attrs={"acceleration": float(mask.size / mask.sum()), "num_low_frequency": 16})
        bart.write_cfl(tmp / "ksp", bart.kspace_to_bart(ku))
        t_ecalib = _process_time(["bart", "ecalib", "-m1", "-r", "16", "ksp", "sens"], threads, tmp, repeat)
        bart_maps = bart.maps_from_bart(bart.read_cfl(tmp / "sens"))
        gt = sense_adjoint(torch.from_numpy(k)[None], torch.from_numpy(bart_maps)[None]).abs()[0].numpy()
        print(f"{'':9s} {'ours: mrlearn reconstruct':>34s}   {'BART: ecalib + pics':>30s}   ratios ours / BART")
        for label, method, reg, margin in [("CG-SENSE", "cg-sense", ["-l2", "-r", "0.01"], 0.1),
                                           ("CS-L1", "cs-l1", ["-l1", "-r", "0.005"], 0.5),
                                           ("TV", "tv", ["-R", "T:3:0:0.002"], 0.5)]:
            t_pics = _process_time(["bart", "pics", "-S", *reg, "ksp", "sens", "img"], threads, tmp, repeat)
            img_b = bart.image_from_bart(bart.read_cfl(tmp / "img"))
            t_o = _process_time([*mrlearn, "reconstruct", "--method", method, "--data", str(tmp / "data"),
                                 "--out", str(tmp / "out"), "--device", "cpu"], threads, tmp, repeat)
            img_o = read_reconstruction(tmp / "out" / "slice.h5")[0]
            t0 = time.perf_counter()
            reconstruct(ku, mask, method)
            t_in = time.perf_counter() - t0
            t_b = t_ecalib + t_pics
            p_o, p_b = psnr(gt, img_o), psnr(gt, img_b)
            print(f"{label:9s} {t_o:7.2f} s (in-process {t_in:5.2f} s) {p_o:6.2f} dB   {t_b:7.2f} s "
                  f"({t_ecalib:4.2f} + {t_pics:5.2f}) {p_b:6.2f} dB   time {t_o / t_b:5.2f}   dB {p_o - p_b:+5.2f} "
                  f"(target {'|d| <=' if label == 'CG-SENSE' else '>= -'}{margin})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--small-only", action="store_true")
    parser.add_argument("--matched", action="store_true", help="also the matched-objective 1-D mask comparison")
    args = parser.parse_args()
    if shutil.which("bart") is None:
        raise SystemExit("bart is not on PATH; install BART to run this benchmark")
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"OMP_NUM_THREADS={args.threads} and OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} for both sides")
    cases = [("8-coil brain-size slice", 230, 180, 8), ("15-coil knee-size slice", 640, 368, 15)]
    for name, h, w, c in cases[: 1 if args.small_only else 2]:
        run_defaults(name, h, w, c, args.threads, args.repeat)
    if args.matched:
        for name, h, w, c in cases[: 1 if args.small_only else 2]:
            run_case(name, h, w, c, args.threads, args.repeat)


if __name__ == "__main__":
    main()
