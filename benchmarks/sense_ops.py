"""Benchmark: SENSE forward + adjoint pairs per second (``mrlearn.physics.sense``).

One pair = ``SenseOperator.forward`` (image -> masked coil k-space) then ``.adjoint`` (back to one image), complex64,
for ``--coils`` (default 15) coils at ``--height`` x ``--width`` (default 640 x 368, fastMRI knee raw size), batch
``--batch`` (default 1), with a fastMRI random column mask (4x, centre fraction 0.08). Prints pairs/s, ms per pair
and the implied coil-image FFT throughput, on CPU and, when available, on CUDA (timed with synchronisation).

    python benchmarks/sense_ops.py                  # CPU (+ CUDA if present)
    python benchmarks/sense_ops.py --threads 1 --seconds 5
"""

from __future__ import annotations

import argparse
import time

import torch

from mrlearn.physics.masks import RandomMaskFunc
from mrlearn.physics.sense import SenseOperator


def _data(batch: int, coils: int, h: int, w: int, device: torch.device):
    g = torch.Generator().manual_seed(0)

    def crandn(*shape):
        return torch.complex(torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)).to(device)

    image = crandn(batch, h, w)
    maps = crandn(batch, coils, h, w)
    maps = maps / torch.sqrt((maps.abs() ** 2).sum(dim=1, keepdim=True))  # sum_c |S_c|^2 = 1
    mask = RandomMaskFunc([0.08], [4])((h, w), seed=0)[0].reshape(1, 1, 1, w).to(device)
    return image, maps, mask


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(device: torch.device, batch: int, coils: int, h: int, w: int, seconds: float) -> dict[str, float]:
    image, maps, mask = _data(batch, coils, h, w, device)
    op = SenseOperator(maps, mask)
    with torch.no_grad():
        for _ in range(3):  # warm-up (FFT plans, allocator)
            out = op.adjoint(op.forward(image))
        _sync(device)
        n, t0 = 0, time.perf_counter()
        while True:
            out = op.adjoint(op.forward(image))
            n += 1
            if n % 5 == 0:
                _sync(device)
                if time.perf_counter() - t0 >= seconds:
                    break
        _sync(device)
        dt = time.perf_counter() - t0
    assert out.shape == image.shape and out.dtype == torch.complex64
    pairs = n * batch / dt
    return {"pairs_per_s": pairs, "ms_per_pair": 1e3 / pairs, "coil_ffts_per_s": 2 * coils * pairs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coils", type=int, default=15)
    ap.add_argument("--height", type=int, default=640)
    ap.add_argument("--width", type=int, default=368)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0, help="time budget per device")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-cuda", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    print(f"SENSE forward+adjoint, complex64, {args.coils} coils, {args.height} x {args.width}, batch {args.batch}, "
          f"random 4x column mask; torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    for dev in devices:
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        r = bench(dev, args.batch, args.coils, args.height, args.width, args.seconds)
        print(f"  {name:<28} {r['pairs_per_s']:9.2f} pairs/s   {r['ms_per_pair']:8.3f} ms/pair   "
              f"{r['coil_ffts_per_s']:10.0f} coil FFTs/s")


if __name__ == "__main__":
    main()
