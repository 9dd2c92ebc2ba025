"""The SENSE normal operator ``A^H A`` as unrolled networks use it: centred FFTs with shifts vs the shift-free form.

``composed``: ``sense_adjoint(sense_forward(x))`` (fftshift / ifftshift around every 2-D FFT); ``shift-free``:
:class:`mrlearn.physics.normal.SenseNormal` (``F^H ifftshift(M) F``; a column mask needs only 1-D FFTs along W).
Both are timed forward + backward (a training step differentiates through every data-consistency layer) on
random multi-coil data, best of ``--repeat`` after a warm-up; the maximum relative difference of the two outputs
is printed beside the times (float32 rounding). Usage::

    python benchmarks/normal_operator.py [--threads 1] [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import time

#: (coils, H, W, batch): the embedded dataset's slices (demo and study presets) and a fastMRI knee slice
CASES = ((8, 128, 128, 2), (15, 320, 320, 1))


def best_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    import torch

    from mrlearn.physics.normal import SenseNormal
    from mrlearn.physics.sense import sense_adjoint, sense_forward

    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.1f}; times: forward + backward, best of "
          f"{args.repeat}")
    print(f"{'case':<22} {'mask':<8} {'composed (ms)':>14} {'shift-free (ms)':>16} {'ratio':>7} {'max rel diff':>13}")
    gen = torch.Generator().manual_seed(0)
    for c, h, w, b in CASES:
        maps = torch.randn(b, c, h, w, dtype=torch.complex64, generator=gen)
        x0 = torch.randn(b, h, w, dtype=torch.complex64, generator=gen)
        masks = {"columns": (torch.rand(b, 1, 1, w, generator=gen) < 0.25).float(),
                 "2-D": (torch.rand(b, 1, h, w, generator=gen) < 0.25).float()}
        for kind, mask in masks.items():
            def composed() -> torch.Tensor:
                x = x0.clone().requires_grad_(True)
                out = sense_adjoint(sense_forward(x, maps, mask), maps, None)
                out.abs().sum().backward()
                return out.detach()

            def shift_free() -> torch.Tensor:
                x = x0.clone().requires_grad_(True)
                out = SenseNormal(maps, mask)(x)
                out.abs().sum().backward()
                return out.detach()

            ref, new = composed(), shift_free()
            diff = float((new - ref).abs().max() / ref.abs().max())
            t_old, t_new = best_time(composed, args.repeat), best_time(shift_free, args.repeat)
            case = f"{c} coils {h}x{w} b{b}"
            print(f"{case:<22} {kind:<8} {1e3 * t_old:>14.2f} {1e3 * t_new:>16.2f} {t_old / t_new:>6.2f}x {diff:>13.1e}")


if __name__ == "__main__":
    main()
