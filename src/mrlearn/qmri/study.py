"""The label study (Epstein et al., arXiv 2205.05587): which training label gives which bias and variance.

For each SNR: simulate ``n_train`` IVIM signals (uniform parameters within ``ranges``, Rician noise with
sigma = 1/SNR), fit them by Rician MLE (the MLE labels), train one network per method, then estimate the
parameters of a test grid (f x D x D*, S0 = 1) x ``repeats`` noise draws with every method. Per method,
parameter and grid point: bias = mean(estimate) - truth, std over repeats, RMSE; summaries average |bias|
and std over the grid and pool RMSE. Lightning appears only through :func:`mrlearn.qmri.train.train_network` (imported lazily).

Resuming (``resume=True``, an interrupted study run): the per-voxel fits already done (``fits/snr<k>_labels.pt``,
``fits/snr<k>_mle_fit.pt``: parameters, convergence flags, iterations) are read back, not fitted again; every
network continues from its folder's last checkpoint (``nets/snr<k>_<name>``): a finished one trains no further
step and returns its selected weights, the one in progress goes on from its exact state, the others start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrlearn import registry
from mrlearn.io import atomic_path
from mrlearn.qmri.config import QmriConfig
from mrlearn.qmri.fit import fit_voxels
from mrlearn.qmri.netio import save_network
from mrlearn.qmri.signal import add_noise, get_model, load_protocol, sample_uniform

GRID_PARAMS = ("f", "D", "Dstar")


@dataclass
class MethodSpec:
    """One estimator of the study: ``kind`` is ``fit`` or a network label (gt, mle, ss, hybrid)."""

    name: str
    kind: str
    alpha: float | None = None
    wide: bool = False


def method_specs(q: QmriConfig) -> list[MethodSpec]:
    """Expand ``q.methods`` into estimators (``hybrid`` -> one per alpha)."""
    out: list[MethodSpec] = []
    for m in q.methods:
        wide = m.endswith("_wide")
        base = m[:-5] if wide else m
        sfx = "_wide" if wide else ""
        if base == "mle_fit":
            out.append(MethodSpec("mle_fit", "fit"))
        elif base == "net_gt":
            out.append(MethodSpec(f"net_gt{sfx}", "gt", 0.0, wide))
        elif base == "net_mle":
            out.append(MethodSpec(f"net_mle{sfx}", "mle", 1.0, wide))
        elif base == "net_ss":
            out.append(MethodSpec(f"net_ss{sfx}", "ss", None, wide))
        else:
            out += [MethodSpec(f"hybrid{sfx}_a{a:g}", "hybrid", float(a), wide) for a in q.alphas]
    return out


def ground_truth_grid(q: QmriConfig, names: tuple[str, ...]) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Groundtruth grid ``[G, P]`` (S0 = 1; f, D, D* on ``grid_points`` evenly spaced values) and the axes."""
    axes = [np.linspace(q.ranges[k][0], q.ranges[k][1], q.grid_points) for k in GRID_PARAMS]
    mesh = np.meshgrid(*axes, indexing="ij")
    grid = np.zeros((mesh[0].size, len(names)))
    for i, k in enumerate(names):
        grid[:, i] = 1.0 if k == "S0" else mesh[GRID_PARAMS.index(k)].ravel()
    return torch.from_numpy(grid), axes


def grid_metrics(est: torch.Tensor, truth: torch.Tensor) -> dict[str, np.ndarray]:
    """``est [G, R, P]`` vs ``truth [G, P]`` -> bias, std, rmse, each ``[G, P]`` (numpy)."""
    mean = est.mean(1)
    bias = mean - truth
    std = est.std(1, unbiased=True)
    rmse = torch.sqrt(((est - truth[:, None]) ** 2).mean(1))
    return {"bias": bias.numpy(), "std": std.numpy(), "rmse": rmse.numpy()}


def summarise(m: dict[str, np.ndarray], names: tuple[str, ...], widths: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per parameter: mean |bias|, mean signed bias, mean std, pooled RMSE over the grid (and relative to range)."""
    out = {}
    for i, k in enumerate(names):
        w = widths[k]
        abs_bias = float(np.mean(np.abs(m["bias"][:, i])))
        std = float(np.mean(m["std"][:, i]))
        rmse = float(np.sqrt(np.mean(m["rmse"][:, i] ** 2)))
        out[k] = {"abs_bias": abs_bias, "bias": float(np.mean(m["bias"][:, i])), "std": std, "rmse": rmse,
                  "rel_abs_bias": abs_bias / w, "rel_std": std / w, "rel_rmse": rmse / w}
    return out


def fit_record(result: Any, max_iter: int) -> dict[str, Any]:
    """Convergence fields of a per-voxel fit, as a classical solver's (:mod:`mrlearn.recon.stopping`):
    ``stopped_by`` ``tolerance`` when every voxel met the fit's stopping rule, else ``max_iter``; ``best_score``
    the fraction of voxels that did; ``steps`` the iterations of the slowest voxel."""
    fraction = float(result.converged.float().mean()) if result.converged.numel() else 0.0
    done = fraction == 1.0
    return {"steps": int(result.iterations), "best_step": None, "stopped_by": "tolerance" if done else "max_iter",
            "converged": done, "monitor": "voxels_converged", "best_score": fraction, "max_iter": int(max_iter)}


def cached_fit(path: Path, resume: bool, writer: bool, fit: Any) -> Any:
    """The per-voxel fit ``fit()`` kept in ``path`` (``params``, ``converged``, ``iterations``; written by the
    ``writer``); with ``resume`` a fit saved by the interrupted run is read back instead of computed again."""
    if resume and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return SimpleNamespace(params=saved["params"], converged=saved["converged"], iterations=int(saved["iterations"]))
    result = fit()
    if writer:
        with atomic_path(path) as tmp:
            torch.save({"params": result.params, "converged": result.converged,
                        "iterations": int(result.iterations)}, tmp)
    return result


def run_study(q: QmriConfig, out: Path, seed: int, optim: dict[str, Any], max_epochs: int,
              accelerator: str = "cpu", log=print, max_steps: int = -1, devices: int | str = 1,
              strategy: str = "auto", resume: bool = False) -> dict[str, Any]:
    """Run the study into ``out`` (networks under ``out/models``, their training folders under ``out/nets``, the
    per-voxel fits under ``out/fits``); returns the results dict used by the report (``training``: each network's
    convergence record). ``resume``: continue an interrupted study in ``out`` (module docstring).

    ``devices``/``strategy``: each network trains with that many processes (DDP, ``q.batch_size`` per process);
    every rank computes the same results, rank 0 alone writes the networks."""
    from mrlearn.engine.cluster import process_rank

    writer = process_rank() == 0
    bvals = load_protocol(q.bvals, "qmri.bvals")
    fn, spec = get_model(q.model, "qmri.model")
    names = spec.names
    scales = torch.tensor([float(q.ranges[k][1]) for k in names], dtype=torch.float64)
    bounds = None if q.fit_bounds is None else {k: tuple(v) for k, v in q.fit_bounds.items()}
    widths = {k: float(q.ranges[k][1] - q.ranges[k][0]) for k in names}
    grid, axes = ground_truth_grid(q, names)
    specs = method_specs(q)
    nets_needed = [s for s in specs if s.kind != "fit"]
    width = q.width or int(bvals.numel())
    results: dict[str, Any] = {"names": list(names), "axes": {k: a.tolist() for k, a in zip(GRID_PARAMS, axes)},
                               "snr": {}, "methods": [s.name for s in specs],
                               "alphas": {s.name: s.alpha for s in specs}, "training": {}, "fits": {}}
    for si, snr in enumerate(q.snrs):
        gen = torch.Generator().manual_seed(seed * 1000 + si)
        sigma = 1.0 / snr
        theta = sample_uniform(q.ranges, names, q.n_train, gen)
        train_sig = add_noise(fn(theta, bvals), snr, q.noise, gen)
        need_mle = any(s.kind in ("mle", "hybrid") for s in nets_needed)
        if need_mle:
            lab = cached_fit(out / "fits" / f"snr{snr:g}_labels.pt", resume, writer, lambda: fit_voxels(
                train_sig, bvals, q.model, "mle", sigma=sigma, bounds=bounds, n_starts=q.fit_starts,
                max_iter=q.fit_max_iter))
            mle_labels = lab.params
            log(f"SNR {snr:g}: MLE labels for {q.n_train} signals, converged {lab.converged.float().mean().item():.3f}")
        else:
            mle_labels = theta
        truth = grid.repeat_interleave(q.repeats, 0)
        test_sig = add_noise(fn(truth, bvals), snr, q.noise, gen)
        estimates: dict[str, torch.Tensor] = {}
        gt_states: dict[bool, dict[str, torch.Tensor]] = {}

        def train(kind: str, alpha: float, wide: bool, name: str, init=None):
            w = width * (q.wide_factor if wide else 1)
            net, info = train_network(train_sig, theta / scales, mle_labels / scales, bvals, scales, q.model, kind,
                                      run_dir=out / "nets" / f"snr{snr:g}_{name}", alpha=alpha, width=w,
                                      n_hidden=q.n_hidden, optim=optim, seed=seed + 17 * si, max_epochs=max_epochs,
                                      max_steps=max_steps, batch_size=q.batch_size, val_fraction=q.val_fraction,
                                      patience=q.patience, min_delta=q.min_delta, lr_patience=q.lr_patience,
                                      stop_on=q.stop_on, stability_tol=q.stability_tol,
                                      widths=[widths[k] for k in names],
                                      accelerator=accelerator, init_state=init,
                                      devices=devices, strategy=strategy, resume=resume)
            results["training"][f"snr{snr:g}/{name}"] = info
            stab = info.get("stability")
            how = (f"estimates settled within {stab['tol']:g} of the ranges after {stab['moves']} moves, last change "
                   f"{float(stab['last_change'] if stab['last_change'] is not None else 'nan'):.3g}" if stab else f"best val loss {info['best_val_loss']:.4g} at step {info['best_step']}")
            log(f"SNR {snr:g}: trained {name}: {how}, {info['steps']} steps, stopped by {info['stopped_by']}"
                + ("" if info["converged"] else " (NOT converged)"))
            if writer:
                save_network(out / "models" / f"snr{snr:g}_{name}.pt", net, bvals, scales, q.model, w, q.n_hidden,
                             names, info={"label": kind, "training": info}, ranges=q.ranges)
            return net

        # groundtruth networks first: the others start from them (Epstein et al.) when init_from_gt is set
        order = sorted(specs, key=lambda s: (s.kind != "fit", s.kind != "gt"))
        for s in order:
            if s.kind == "fit":
                r = cached_fit(out / "fits" / f"snr{snr:g}_{s.name}.pt", resume, writer, lambda: fit_voxels(
                    test_sig, bvals, q.model, "mle", sigma=sigma, bounds=bounds, n_starts=q.fit_starts,
                    max_iter=q.fit_max_iter))
                estimates[s.name] = r.params
                results["fits"][f"snr{snr:g}/{s.name}"] = fit_record(r, q.fit_max_iter)
                log(f"SNR {snr:g}: mle_fit on {truth.shape[0]} test signals, converged "
                    f"{r.converged.float().mean().item():.3f}")
                continue
            init = None
            if q.init_from_gt and s.kind != "gt":
                if s.wide not in gt_states:
                    name = "net_gt_wide" if s.wide else "net_gt"
                    gt_states[s.wide] = train("gt", 0.0, s.wide, f"{name}_init").state_dict()
                init = gt_states[s.wide]
            net = train(s.kind, s.alpha if s.alpha is not None else 0.5, s.wide, s.name, init)
            if s.kind == "gt":
                gt_states[s.wide] = net.state_dict()
            with torch.no_grad():
                estimates[s.name] = (net(test_sig.float()).double() * scales)
        estimates = {s.name: estimates[s.name] for s in specs}
        per_method = {}
        for name, est in estimates.items():
            m = grid_metrics(est.reshape(grid.shape[0], q.repeats, -1), grid)
            per_method[name] = {"maps": m, "summary": summarise(m, names, widths)}
        results["snr"][f"{snr:g}"] = per_method
    results["findings"] = findings(results)
    return results


def train_network(*args, **kwargs):
    """Lazy import so that the maths above never imports Lightning at module import time."""
    from mrlearn.qmri.train import train_network as _train
    return _train(*args, **kwargs)


def findings(results: dict[str, Any]) -> list[str]:
    """Check the seed's claims per SNR and parameter (f, D, D*) and say what came out, in words."""
    lines = []
    for snr, per in results["snr"].items():
        have = set(per)
        if not {"net_gt", "net_mle"} <= have:
            lines.append(f"SNR {snr}: net_gt and net_mle are both needed to test the claims.")
            continue
        for k in GRID_PARAMS:
            gt, ml = per["net_gt"]["summary"][k], per["net_mle"]["summary"][k]
            claim_var = gt["std"] < ml["std"]
            claim_bias = gt["abs_bias"] > ml["abs_bias"]
            txt = (f"SNR {snr}, {k}: groundtruth labels std {gt['std']:.4g} vs MLE labels {ml['std']:.4g} "
                   f"({'lower: as claimed' if claim_var else 'NOT lower: refuted'}); |bias| {gt['abs_bias']:.4g} vs "
                   f"{ml['abs_bias']:.4g} ({'higher: as claimed' if claim_bias else 'NOT higher: refuted'})")
            if "net_ss" in have:
                ss = per["net_ss"]["summary"][k]
                txt += (f"; self-supervised std {ss['std']:.4g}, |bias| {ss['abs_bias']:.4g} "
                        f"({'higher variance than GT labels' if ss['std'] > gt['std'] else 'not higher variance than GT labels'})")
            hyb = sorted((results["alphas"][n], per[n]["summary"][k]) for n in per if n.startswith("hybrid_a"))
            if hyb:
                between = all(min(gt["std"], ml["std"]) - 1e-12 <= h["std"] <= max(gt["std"], ml["std"]) + 1e-12
                              for _, h in hyb)
                txt += (f"; hybrid std over alpha {[round(h['std'], 4) for _, h in hyb]} "
                        f"({'between GT and MLE' if between else 'not all between GT and MLE'})")
            lines.append(txt + ".")
    return lines


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


@registry.register("runner", "qmri")
def study_runner(cfg: Any, resume: bool = False):
    """Study runner ``qmri`` (see :mod:`mrlearn.qmri.runner`): one label study run -> RunOutcome; ``resume``:
    continue an interrupted run folder (fits read back, networks from their checkpoints)."""
    from mrlearn.qmri.runner import label_study_runner

    return label_study_runner(cfg, resume=resume)
