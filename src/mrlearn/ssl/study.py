"""Study runner ``ssl`` (``study.runner.register_runner``): train (or, for ``reference`` arms, only build) one run,
then score it on the ``test`` split with the fastMRI metrics, per volume (PSNR with the volume max, SSIM per slice
with the volume max, NMSE), plus per-slice rows and the middle slice of the first volume as example images.

Every arm of ``configs/ssl_vs_supervised.yaml`` -- supervised U-Net, supervised unrolled, SSDU, multi-mask SSDU,
self-distillation, zero-filled and CS -- is scored by this same code on the same test slices with the same
(per-file fixed) masks, so their numbers are comparable. Group: ``all``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mrlearn.study.runner import RunOutcome, register_runner


def score(module: Any, loader: Any, group: str = "all") -> RunOutcome:
    """Reconstruct every slice of ``loader`` with ``module.reconstruct`` and score the volumes that have targets."""
    from mrlearn.evaluation import metrics as M

    module.eval()
    vols: dict[str, dict[str, list]] = {}
    with torch.no_grad():
        for batch in loader:
            out = module.reconstruct(batch).float().cpu().numpy()
            for i, fname in enumerate(batch["fname"]):
                if not bool(batch["has_target"][i]):
                    continue
                v = vols.setdefault(fname, {"slices": [], "pred": [], "target": [], "input": []})
                v["slices"].append(int(batch["slice"][i]))
                v["pred"].append(out[i])
                v["target"].append(batch["target"][i, 0].float().cpu().numpy())
                v["input"].append(batch["zero_filled"][i, 0].float().cpu().numpy())
    per_volume, slices, examples = [], [], {}
    for fname in sorted(vols):
        v = vols[fname]
        order = np.argsort(v["slices"])
        gt = np.stack(v["target"])[order].astype(np.float64)
        pred = np.stack(v["pred"])[order].astype(np.float64)
        vmax = float(gt.max())
        per_volume.append({"psnr": M.psnr(gt, pred), "ssim": M.ssim(gt, pred), "nmse": M.nmse(gt, pred)})
        ssims = M.slice_ssim(gt, pred, vmax)
        for j, s in enumerate(np.asarray(v["slices"])[order]):
            slices.append({"group": group, "fname": fname, "slice": int(s), "psnr": M.psnr(gt[j], pred[j], vmax),
                           "ssim": float(ssims[j]), "nmse": M.nmse(gt[j], pred[j])})
        if not examples:
            mid = len(order) // 2
            examples[group] = {"target": gt[mid], "input": np.stack(v["input"])[order][mid], "output": pred[mid]}
    groups = {}
    if per_volume:
        groups[group] = {k: float(np.mean([m[k] for m in per_volume])) for k in ("psnr", "ssim", "nmse")}
        groups[group]["volumes"] = len(per_volume)
    return RunOutcome(groups=groups, slices=slices, examples=examples)


def study_runner(cfg: Any) -> RunOutcome:
    """Fit ``cfg`` (``mrlearn train`` path) unless its method is ``reference``; score on the test split."""
    from mrlearn.training.data import ReconDataModule
    from mrlearn.training.runner import build_method, train

    extra: dict[str, Any] = {}
    if cfg.method.get("name") == "reference":
        module = build_method(cfg)
    else:
        result = train(cfg)
        module = result.module
        extra = {"val": result.metrics, "steps": len(result.history)}
        energy = [h["val_collapse_energy"] for h in result.history if "val_collapse_energy" in h]
        if energy:
            extra["val_collapse_energy"] = energy[-1]
    dm = ReconDataModule(cfg, keep_kspace=module.keep_kspace)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    loader = dm.eval_loader("test")
    outcome = score(_OnDevice(module, device), loader)
    outcome.extra.update(extra)
    return outcome


class _OnDevice:
    """Moves each batch's tensors to the module's device before ``reconstruct``."""

    def __init__(self, module: Any, device: torch.device):
        self.module, self.device = module, device

    def eval(self) -> None:
        self.module.eval()

    def reconstruct(self, batch: dict[str, Any]) -> torch.Tensor:
        moved = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return self.module.reconstruct(moved)


register_runner("ssl", study_runner)
