"""Study runner ``layerwise`` (Ozturkler et al. 2021, Fig. 2-4) for the shared study machinery (``mrlearn study``).

``runner: layerwise`` (registry kind ``runner``) in a study YAML (``configs/layerwise_study.yaml``) makes :func:`study_runner` run each arm:

* ``layerwise_end_to_end``: one network per depth ``d`` in ``method.depths`` (default ``1..N``, ``N =
  model.num_blocks``; the runner reads this key, the training module never sees it), each trained jointly with
  ``model.num_blocks = d`` in ``<run>/depth<d>/``; group ``blocks=d`` scores the d-block network;
* ``layerwise_greedy`` / ``layerwise_convex``: one run of ``N`` stages; group ``blocks=d`` scores its first ``d``
  blocks (the truncated residual stack ``x_d``).

All through :func:`mrlearn.layerwise.train.train` (the spine's Lightning path). Scores are on the ``test`` split,
fastMRI metrics of ``|output| * scale`` against the magnitude of the fully sampled SENSE image, per volume (PSNR
and SSIM with the volume max as data range, SSIM averaged over slices, NMSE), mean over volumes; per-slice rows
(group ``blocks=d``) feed the study's paired differences against the baseline arm. Examples: the middle slice of
the first test volume at the full depth (group ``blocks=N``: target, zero-filled input, output).
``extra``: ``zero_filled`` (the input's metrics), ``convex_log`` (convex / recovered objective and gap per block),
``gap_vs_patterns`` (convex runs: block 1's gap for nested subsets of the sampled patterns), ``memory`` (peak
memory of one training step at the run's size, fresh process, :mod:`mrlearn.layerwise.memory`),
``seconds_train_and_score``.

``resume=True`` (an interrupted study run, :mod:`mrlearn.study.resume`) continues from the checkpoints with the
exact state: greedy and convex their one fit (the greedy stage and its best block weights, the solved convex
blocks travel in the checkpoint); end-to-end, whose depths are phases in folders of their own below a run folder
(:mod:`mrlearn.training.phases`), reads back the finished depths (the weights they selected) and resumes the one in
progress. Reference rows train nothing and are scored again.

``python -m mrlearn.layerwise.study --preset cpu|tiny`` is a thin wrapper: it builds the preset's embedded
dataset and runs the shipped study (``layerwise_study`` or ``layerwise_study_tiny``) with its overrides.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrlearn.io import read_json
from mrlearn.registry import register
from mrlearn.study.runner import RunOutcome

METHODS = ("layerwise_end_to_end", "layerwise_greedy", "layerwise_convex")
_MEMORY: dict[tuple, dict[str, Any]] = {}  # memory probes are identical across masks/arms of one size: measure once


def group_name(depth: int) -> str:
    """Study group of the first ``depth`` blocks."""
    return f"blocks={depth}"


@torch.no_grad()
def score_depths(module: Any, cfg: Any, depths: list[int]) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]],
                                                                    dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """Test-split metrics of ``module``'s network truncated at each depth.

    Returns (groups ``blocks=d`` -> mean metrics over volumes, per-slice rows, examples of the deepest depth,
    zero-filled input metrics). Images are magnitudes in the data's units (``|x| * scale``).
    """
    from mrlearn.physics.complex import channels_to_complex
    from mrlearn.training.data import ReconDataModule

    module = module.eval().cpu()
    loader = ReconDataModule(cfg, transform_factory=module.build_transform).eval_loader("test")
    vols: dict[str, dict[Any, list]] = {}
    for batch in loader:
        scale = batch["std"].reshape(-1, 1, 1)
        preds = {0: channels_to_complex(batch["image"]).abs() * scale}
        x, done = batch["image"], 0
        for d in sorted(depths):  # x_d = block_d(x_{d-1}): each block runs once per batch
            for block in module.model.blocks[done:d]:
                x = block(x)
            done = d
            preds[d] = channels_to_complex(x.float()).abs() * scale
        add_slices(vols, batch["fname"], batch["slice"], batch["target"][:, 0], preds)
    return score_volumes(vols, depths)


def add_slices(vols: dict[str, dict[Any, list]], fnames: Any, slices: Any, targets: torch.Tensor,
               preds: dict[int, torch.Tensor]) -> None:
    """Keep slices ``(fname, slice)`` with their target ``[B, h, w]`` and predictions ``{depth: [B, h, w]}``
    (depth 0: the zero-filled input) for :func:`score_volumes`."""
    for i, fname in enumerate(fnames):
        v = vols.setdefault(str(fname), {"slice": [], "target": [], **{d: [] for d in preds}})
        v["slice"].append(int(slices[i]))
        v["target"].append(targets[i].double().numpy())
        for d, p in preds.items():
            v[d].append(p[i].double().numpy())


def score_volumes(vols: dict[str, dict[Any, list]], depths: list[int]) -> tuple[
        dict[str, dict[str, float]], list[dict[str, Any]], dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """fastMRI metrics per volume (volume max as peak) of the kept slices: (groups ``blocks=d`` -> mean over
    volumes, per-slice rows, the middle slice of the first volume at the deepest depth, zero-filled metrics)."""
    from mrlearn.evaluation.scoring import mean_metrics, slice_metrics, volume_metrics

    per_depth: dict[int, list[dict[str, float]]] = {d: [] for d in [0, *depths]}
    slices: list[dict[str, Any]] = []
    examples: dict[str, dict[str, np.ndarray]] = {}
    for fname in sorted(vols):
        v = vols[fname]
        order = np.argsort(v["slice"])
        gt = np.stack(v["target"])[order]
        vmax = float(gt.max())
        for d in per_depth:
            pred = np.stack(v[d])[order]
            per_depth[d].append(volume_metrics(gt, pred, vmax))
            if d == 0:
                continue
            for s, row in zip(np.asarray(v["slice"])[order], slice_metrics(gt, pred, vmax)):
                slices.append({"group": group_name(d), "fname": fname, "slice": int(s), **row})
        if not examples and depths:
            mid, top = len(order) // 2, max(depths)
            examples[group_name(top)] = {"target": gt[mid], "input": np.stack(v[0])[order][mid],
                                         "output": np.stack(v[top])[order][mid]}
    mean = {d: mean_metrics(ms) for d, ms in per_depth.items() if ms}
    groups = {group_name(d): mean[d] for d in depths if d in mean}
    return groups, slices, examples, mean.get(0, {})


def gap_vs_patterns(module: Any, cfg: Any, patterns: list[int]) -> list[dict[str, Any]]:
    """Block 1 on training patches: convex objective, recovered ReLU objective and gap for nested pattern sets.

    The first ``P`` of the same random filters for every ``P`` (so the convex objective can only decrease with
    ``P``); patches as in training (``patches_per_slice`` random pixels per slice, seeded).
    """
    from mrlearn.layerwise.convex import ConvexProblem, recover_relu_weights, relu_objective, sample_gates, solve_convex
    from mrlearn.layerwise.patches import patch_matrix, pixel_matrix
    from mrlearn.training.data import ReconDataModule

    m = cfg.method
    k = int(cfg.model.get("kernel_size", 7))
    ds = ReconDataModule(cfg, transform_factory=module.build_transform).dataset("train")
    gen = torch.Generator().manual_seed(cfg.seed)
    Ys, Xs = [], []
    for i in range(len(ds)):
        s = ds[i]
        x, t = s["image"].unsqueeze(0), s["target_complex"].unsqueeze(0)
        Y, X = patch_matrix(x, k), pixel_matrix(t - x)
        rows = torch.randperm(Y.shape[0], generator=gen)[: int(m.get("patches_per_slice", 2000))]
        Ys.append(Y[rows])
        Xs.append(X[rows])
    Y, X = torch.cat(Ys), torch.cat(Xs)
    variant = str(m.get("variant", "gated"))
    log = getattr(module, "convex_log", None) or [{}]
    beta = float(log[0].get("beta", module.beta))  # block 1's beta (the one chosen on validation with betas)
    H, G = sample_gates(Y, max(patterns), torch.Generator().manual_seed(cfg.seed + 1))
    out = []
    for P in patterns:
        prob = ConvexProblem(Y=Y, X=X, G=G[:, :P].contiguous(), beta=beta, variant=variant, H=H[:, :P])
        t0 = time.perf_counter()
        U, _, restarts, iters = solve_convex(prob, int(m.get("max_iter", 5000)), float(m.get("tol", 1e-6)))
        gw, fw = recover_relu_weights(U, variant, 2, k)
        conv, relu = prob.objective(U), relu_objective(Y, X, gw, fw, beta)
        out.append({"variant": variant, "patterns": P, "convex_objective": conv, "relu_objective": relu,
                    "gap": relu - conv, "relative_gap": (relu - conv) / conv, "neurons": int(gw.shape[0]),
                    "iterations": iters, "restarts": restarts, "seconds": round(time.perf_counter() - t0, 3)})
    return out


def step_memory(mode: str, cfg: Any, size: tuple[int, int], blocks: int) -> dict[str, Any]:
    """Peak memory (MiB) of one training step at the run's batch/size/network, in a fresh process (cached)."""
    from mrlearn.layerwise.memory import measure

    device = "cuda" if torch.cuda.is_available() else "cpu"
    key = (mode, int(cfg.data.batch_size), tuple(size), device, blocks, int(cfg.model.get("hidden", 256)),
           int(cfg.model.get("kernel_size", 7)))
    if key not in _MEMORY:
        r = measure(mode, key[1], key[2], device, blocks, key[5], key[6])
        _MEMORY[key] = {"mode": mode, "batch": key[1], "size": f"{size[0]}x{size[1]}", "device": device,
                        "peak_mib": r.get("peak_mib", float("nan")), "ok": bool(r.get("ok", False))}
    return dict(_MEMORY[key])


@register("runner", "layerwise")
def study_runner(cfg: Any, resume: bool = False) -> RunOutcome:
    """Train one arm of a layer-wise study (see the module docstring) and score every depth on the test split;
    ``resume``: continue an interrupted run folder from its checkpoints."""
    from mrlearn.errors import input_error
    from mrlearn.layerwise.train import train
    from mrlearn.training.phases import run_folder

    name = cfg.method.get("name")
    if name not in METHODS and name != "reference":
        raise input_error("method.name", f"{name!r} is not a layer-wise method for runner 'layerwise'",
                          f"use one of: {', '.join(METHODS)}, or reference (zero-filled, cg-sense)")
    N = int(cfg.model.get("num_blocks", 5))
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if name == "reference":  # a classical row: nothing trained, the same numbers at every depth
        from mrlearn.layerwise.reference import score_reference

        groups, slices, examples, zero, record = score_reference(cfg, list(range(1, N + 1)))
        if record is not None:
            extra["convergence"] = record
        extra.update(seconds_train_and_score=round(time.perf_counter() - t0, 2), zero_filled=zero)
        return RunOutcome(groups=groups, slices=slices, examples=examples, extra=extra)
    if name == "layerwise_end_to_end":
        groups, slices, examples, zero = {}, [], {}, {}
        with run_folder(cfg, resume, "layerwise") as folder:
            for d in _depths(cfg.method.get("depths"), N):
                sub = copy.deepcopy(cfg)
                sub.model = {**cfg.model, "num_blocks": d}
                sub.out_dir = str(cfg.run_dir() / f"depth{d}")
                g, s, ex, zero = score_depths(_depth_module(sub, resume), sub, [d])
                groups.update(g)
                slices.extend(s)
                examples.update(ex)
            folder.finished()
    else:
        res = train(cfg, test=True, resume=resume)
        groups, slices, examples, zero = score_depths(res.module, cfg, list(range(1, N + 1)))
        if name == "layerwise_convex":
            extra["convex_log"] = [dict(e) for e in getattr(res.module, "convex_log", [])]
            P = int(cfg.method.get("num_patterns", 128))
            ladder = sorted({max(1, P // 16), max(1, P // 4), P})
            extra["gap_vs_patterns"] = gap_vs_patterns(res.module, cfg, ladder)
    extra["seconds_train_and_score"] = round(time.perf_counter() - t0, 2)
    extra["zero_filled"] = zero
    if examples:
        size = next(iter(examples.values()))["target"].shape
        extra["memory"] = step_memory("end_to_end" if name == "layerwise_end_to_end" else "layerwise", cfg,
                                      (int(size[0]), int(size[1])), N)
    return RunOutcome(groups=groups, slices=slices, examples=examples, extra=extra)


def _depth_module(sub: Any, resume: bool) -> Any:
    """The end-to-end network of one depth (config ``sub``, its own folder) with the weights it selected: trained,
    resumed, or (``resume`` and the depth finished) loaded from ``best.ckpt`` or ``last.ckpt``, as the ``selected``
    of its ``metrics.json`` says."""
    from mrlearn.layerwise.train import train
    from mrlearn.training.phases import holds_run, is_finished
    from mrlearn.training.runner import load_module

    run_dir = sub.run_dir()
    if resume and is_finished(run_dir):
        best = run_dir / "checkpoints" / "best.ckpt"
        selected = (read_json(run_dir / "metrics.json") or {}).get("selected")
        return load_module(best if selected == "best_checkpoint" else run_dir / "checkpoints" / "last.ckpt", sub)
    return train(sub, test=True, resume=resume and holds_run(run_dir)).module


def _depths(value: Any, num_blocks: int) -> list[int]:
    """The end-to-end depths to train: ``method.depths`` (distinct integers in ``1..num_blocks``) or all of them."""
    from mrlearn.errors import input_error

    if value is None:
        return list(range(1, num_blocks + 1))
    ok = isinstance(value, (list, tuple)) and value and all(
        isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= num_blocks for d in value)
    if not ok or len(set(value)) != len(value):
        raise input_error("method.depths", f"must be a list of distinct depths in 1..{num_blocks}, got {value!r}",
                          f"use e.g. [{num_blocks}] or leave it out for every depth")
    return sorted(value)


# ------------------------------------------------------------------------------------------ standalone wrapper
#: preset -> (shipped study, embedded-dataset options or None for data.root as configured, extra overrides)
PRESETS: dict[str, tuple[str, dict[str, Any] | None, list[str]]] = {
    # the study's sizes on a population of 64 x 64 phantom subjects, 6 / 2 / 10 subjects x 4 slices, 8 coils (the
    # former standalone run of these sizes, with 2 test volumes, took about 25 min on 2 cores with gated convex)
    "cpu": ("layerwise_study", dict(matrix=(64, 64), slices=4, subjects=(6, 2, 10), coils=8, anatomy="phantom"), []),
    # seconds: the test study
    "tiny": ("layerwise_study_tiny", dict(matrix=(40, 40), slices=2, subjects=(2, 1, 1), coils=4, anatomy="phantom"),
             []),
}


def preset_data(options: dict[str, Any], contrast: str = "PD", seed: int = 0) -> Path:
    """The embedded dataset of a preset (built once, cached)."""
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    return simulate_dataset(None, SimulationOptions(contrasts=(contrast,), seed=seed, **options))


def main(argv: list[str] | None = None) -> int:
    """``python -m mrlearn.layerwise.study --preset cpu [--out DIR] [--data-root DIR] [--set k=v] [--threads n]``."""
    import sys

    from mrlearn.errors import MrlearnError
    from mrlearn.study import load_study, run_study

    p = argparse.ArgumentParser(prog="python -m mrlearn.layerwise.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--out", default=None, help="study folder (default: runs/<study name>)")
    p.add_argument("--data-root", default=None,
                   help="fastMRI folder with train/val/test (default: the preset's embedded data)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for this process")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # command-line entry point, not library code
    study, data, sets = PRESETS[args.preset]
    try:
        root = args.data_root or (str(preset_data(data)) if data is not None else None)
        overrides = ([f"data.root={root}", "data.volume_count=null", "data.slice_count=null"] if root else []) + sets
        spec = load_study(study, overrides + list(args.overrides))
        out = run_study(spec, args.out)
    except MrlearnError as exc:
        print(f"mrlearn: error: {exc}", file=sys.stderr)
        return 2
    print(f"layerwise study: {out / 'study.csv'}, {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
