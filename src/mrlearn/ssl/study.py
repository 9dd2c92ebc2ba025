"""Study runner ``ssl`` (registry kind ``runner``): train (or, for ``reference`` arms, only build) one run,
then score it on the ``test`` split with the fastMRI metrics, per volume (PSNR with the volume max, SSIM per slice
with the volume max, NMSE), plus per-slice rows and the middle slice of the first volume as example images.

Every arm of ``configs/ssl_vs_supervised.yaml`` -- supervised U-Net, supervised unrolled, SSDU, multi-mask SSDU,
self-distillation, zero-filled and CS -- is scored by this same code on the same test slices with the same
(per-file fixed) masks, so their numbers are comparable. Group: ``all``. A trained arm is scored with its best
checkpoint by validation (``checkpoint_monitor``: the held-out k-space loss for self-supervised methods, so no
fully sampled image selects their model); ``extra.selected`` says which weights were scored.
"""

from __future__ import annotations

from typing import Any

import torch

from mrlearn.registry import register
from mrlearn.study.runner import RunOutcome


def score(module: Any, loader: Any, group: str = "all") -> RunOutcome:
    """Reconstruct every slice of ``loader`` with ``module.reconstruct`` and score the volumes that have targets."""
    from mrlearn.evaluation.scoring import VolumeCollector, mean_metrics

    module.eval()
    collector = VolumeCollector(slice_rows=True, examples=1, group=group)
    with torch.no_grad():
        for batch in loader:
            collector.add_batch(batch, module.reconstruct(batch))
    results = collector.finish()
    groups = {group: mean_metrics(results.values())} if results else {}
    examples = {group: next(iter(collector.examples.values()))} if collector.examples else {}
    return RunOutcome(groups=groups, slices=collector.slices, examples=examples)


@register("runner", "ssl")
def study_runner(cfg: Any, resume: bool = False) -> RunOutcome:
    """Fit ``cfg`` (``mrlearn train`` path) unless its method is ``reference``; score on the test split.
    ``resume``: continue an unfinished run folder from its ``checkpoints/last.ckpt``."""
    from mrlearn.engine.checkpoint import load_checkpoint, load_weights
    from mrlearn.training.data import ReconDataModule
    from mrlearn.training.runner import build_method, train

    extra: dict[str, Any] = {}
    if cfg.method.get("name") == "reference":
        module = build_method(cfg)
    else:
        result = train(cfg, resume=resume)
        module = result.module
        selected = "last"
        if result.best_checkpoint is not None and result.best_checkpoint.is_file():
            load_weights(module, load_checkpoint(result.best_checkpoint)["state_dict"], result.best_checkpoint)
            selected = "best"
        extra = {"val": result.metrics, "epochs": len(result.history), "selected": selected,
                 "monitor": list(getattr(module, "checkpoint_monitor", ("val_ssim", "max")))}
        energy = [h["val_collapse_energy"] for h in result.history if "val_collapse_energy" in h]
        if energy:
            extra["val_collapse_energy"] = energy[-1]
    dm = ReconDataModule(cfg, keep_kspace=module.keep_kspace)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    loader = dm.eval_loader("test")
    outcome = score(_OnDevice(module, device), loader)
    outcome.extra.update(extra)
    record = module.solver_record() if hasattr(module, "solver_record") else None
    if record is not None:  # an iterative classical reference: how its solver stopped
        outcome.extra["convergence"] = record
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

