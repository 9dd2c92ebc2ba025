"""Cost of the recon_seg study's arms at preset size, and the study's projected wall time.

For every arm of a study file (default: the shipped ``recon_seg``), on its base data (the embedded population),
one torch thread (the preset runs 2 workers x 1 thread on 2 cores): the fastest of ``--steps`` training steps
(data loading, forward, backward, Adam step; after ``--warmup`` steps) through the method's own ``training_loss``
(the two-step arm: its reconstruction stage, then its segmentation stage), and the fastest of ``--val-repeats``
validation passes over the val split (reconstruct + segment every slice). Times are this process's CPU time
(``time.process_time``, one thread): the machine is shared, and CPU time is what a step costs without other
processes' load (the wall-clock minimum and the load average are printed beside it). Then the projection: per fit, ``steps x step time +
validations x validation time``, for a fit that stops after ``--expect`` of its step cap and for one that runs to
the cap (plus one more validation of the selected weights and the test pass, 40 / 24 of a validation, twice for
a joint arm); every arm x grid point x seed, plus the stopping check (one seed per arm and grid point, caps x2, assumed
to run ``--check-factor`` x as long as its original; at the caps, the check's own factor), divided by the ``--workers`` running at once. Ratios are
to the two-step arm (the baseline of the study), measured in the same run.

    python benchmarks/recon_seg_study_steps.py [--study recon_seg] [--steps 6] [--warmup 2] [--expect 0.5]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch


#: slices of the population's val and test splits (4 x 6 and 10 x 4): the test pass costs val x 40 / 24
VAL_SLICES, TEST_SLICES = 24, 40


def _step_time(cfg: Any, steps: int, warmup: int) -> tuple[float, float]:
    """``(CPU, wall)`` seconds of the fastest training step of ``cfg``'s method (loader included)."""
    from mrlearn.training.runner import build_method, make_datamodule

    module = build_method(cfg)
    dm = make_datamodule(cfg, module)
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    module.train()
    times, walls = [], []
    it = iter(dm.train_dataloader())
    for i in range(warmup + steps):
        t0, w0 = time.process_time(), time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(dm.train_dataloader())
            batch = next(it)
        opt.zero_grad()
        module.training_loss(batch).backward()
        opt.step()
        if i >= warmup:
            times.append(time.process_time() - t0)
            walls.append(time.perf_counter() - w0)
    return min(times), min(walls)


def _val_time(cfg: Any, repeats: int) -> float:
    """Fastest CPU seconds of a pass over the val split (reconstruction and labels of every slice)."""
    from mrlearn.training.runner import build_method, make_datamodule

    module = build_method(cfg).eval()
    dm = make_datamodule(cfg, module)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        with torch.no_grad():
            for batch in dm.eval_loader("val"):
                module.reconstruct_and_segment(batch)
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="recon_seg")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--val-repeats", type=int, default=2)
    p.add_argument("--expect", type=float, default=0.5, help="fraction of the step cap a fit is expected to run")
    p.add_argument("--check-factor", type=float, default=1.6, help="check run time / original run time")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    from mrlearn.recon_seg.study import run_section, stage_config
    from mrlearn.study.spec import load_study, run_config

    spec = load_study(a.study)
    first = {}
    for run in spec.runs():
        first.setdefault(run.arm, run)
    out = Path("/tmp/recon_seg_bench")
    cost: dict[str, dict[str, float]] = {}
    for arm, run in first.items():
        cfg = run_config(spec, run, out / run.run_id)
        pipeline = run_section(cfg).pipeline
        stages = {"joint": [("joint", {"stage": "joint"})],
                  "two_step": [("recon", {"stage": "recon"}), ("seg", {"stage": "seg"})],
                  "zero_filled": [("seg", {"stage": "seg"})],
                  "target": [("seg", {"stage": "seg", "seg_input": "target", "seg_eval_input": "target"})]}[pipeline]
        step = val = 0.0
        for name, method in stages:
            stage = stage_config(cfg, name, method, None)
            (s, wall), v = _step_time(stage, a.steps, a.warmup), _val_time(stage, a.val_repeats)
            step, val = step + s, val + v
            print(f"{arm:14s} {name:6s} step {1000 * s:7.1f} ms CPU ({1000 * wall:7.1f} ms wall)   "
                  f"validation {v:6.2f} s CPU", flush=True)
        caps = cfg.trainer.max_steps
        vals = caps / cfg.trainer.val_every_n_steps + 1  # + the final validation of the selected weights
        test = val * TEST_SLICES / VAL_SLICES * (2 if pipeline == "joint" else 1)  # joint: two checkpoints scored
        cost[arm] = {"step": step, "val": val, "cap": caps * step + vals * val + test}
    base = cost.get(spec.summary.get("baseline") or "", next(iter(cost.values())))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"\n{'arm':14s} {'step ms':>8s} {'x base':>7s} {'fit at cap (s)':>15s}")
    for arm, c in cost.items():
        print(f"{arm:14s} {1000 * c['step']:8.1f} {c['step'] / base['step']:7.2f} {c['cap']:15.0f}")
    points, seeds = max(1, len(spec.runs()) // (len(spec.arms) * len(spec.seeds))), len(spec.seeds)
    at_cap = sum(c["cap"] for c in cost.values()) * points
    check_seeds = int((spec.stopping_check or {}).get("seeds", 0))
    factor = float((spec.stopping_check or {}).get("factor", 1.0))
    for label, frac, grow in ((f"expected ({a.expect:g} of the caps)", a.expect, a.check_factor),
                              ("every fit at its cap (checks at their x2 caps)", 1.0, factor)):
        runs = at_cap * frac * seeds
        checks = at_cap * frac * check_seeds * grow
        total = (runs + checks) / a.workers
        print(f"projection, {label}: runs {runs / 60:.1f} min + check {checks / 60:.1f} min of one core; "
              f"{total / 60:.1f} min with {a.workers} workers")


if __name__ == "__main__":
    main()
