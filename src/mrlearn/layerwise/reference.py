"""Classical reference rows of a layer-wise study: zero-filled SENSE and CG-SENSE, scored as the networks are.

An arm ``method: {name: reference, recon: zero-filled | cg-sense, options: {...}}`` of a ``runner: layerwise``
study trains nothing. Every test slice gets the networks' own geometry (:class:`~mrlearn.layerwise.data.SenseTransform`):
the same per-file fixed test mask, the same maps (from the ``calib`` centre of the undersampled k-space), the same
fully sampled SENSE target ``x = sum_c conj(S_c) F^-1 y_c`` and crop, so the rows compare with the networks':

* ``zero-filled``: ``x0 = A^H M y`` (the networks' input);
* ``cg-sense``: ``argmin_x ||M F S x - M y||^2 + lam ||x||^2`` by conjugate gradient
  (:func:`mrlearn.recon.cg_sense.cg_sense`; ``options``: ``lam`` (default 0.01, dimensionless), ``tol`` (1e-6,
  relative residual), ``max_iter`` (300, a safety cap)) with those maps, at the k-space matrix size, then cropped.
  With full sampling and ``lam = 0`` its solution is the target itself.

Scores: magnitudes in data units against ``|x|``, fastMRI PSNR / SSIM / NMSE per volume (volume max), the same
numbers in every group ``blocks=1..N`` (a classical method has no depth), so each depth's table and paired
differences hold the reference rows. CG-SENSE's stopping (every slice's tolerance met, else ``max_iter``) is the
run's convergence record (:func:`mrlearn.recon.stopping.solver_record`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mrlearn.errors import input_error
from mrlearn.layerwise.data import SenseTransform, sense_maps
from mrlearn.physics.complex import crop_or_pad
from mrlearn.physics.sense import sense_adjoint

RECONS = ("zero-filled", "cg-sense")
CG_OPTIONS = {"lam": 0.01, "tol": 1e-6, "max_iter": 300}


def reference_options(recon: Any, options: Any) -> dict[str, Any]:
    """Checked options of a reference row (one-line errors for unknown methods, keys and values)."""
    if recon not in RECONS:
        raise input_error("method.recon", f"{recon!r} is not a reference of the layer-wise study",
                          f"use one of: {', '.join(RECONS)}")
    options = dict(options or {})
    allowed = CG_OPTIONS if recon == "cg-sense" else {}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise input_error("method.options", f"unknown option(s) {', '.join(unknown)} for {recon}",
                          f"use {', '.join(allowed) or 'no options'}")
    out = {**allowed, **options}
    for key, value in out.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
            value >= 1 if key == "max_iter" else (value > 0 if key == "tol" else value >= 0))
        if not ok or (key == "max_iter" and int(value) != value):
            raise input_error(f"method.options.{key}", f"invalid value {value!r}",
                              f"e.g. {key}: {CG_OPTIONS[key]}")
    return out


class ReferenceTransform(SenseTransform):
    """A :class:`SenseTransform` whose sample also holds ``reference`` ``[h, w]``: the classical image (complex,
    data units, cropped); solver infos are appended to ``infos`` (run it in the calling process)."""

    def __init__(self, mask_func: Any, recon: str, options: dict[str, Any], infos: list[dict[str, Any]],
                 seed: int = 0, recon_size: tuple[int, int] | None = None, calib: tuple[int, int] = (16, 16)):
        super().__init__(mask_func, seed=seed, train=False, recon_size=recon_size, calib=calib)
        self.recon, self.options, self.infos = recon, dict(options), infos

    def __call__(self, sample: dict[str, Any], index: int = 0, epoch: int = 0) -> dict[str, Any]:
        from mrlearn.recon.cg_sense import cg_sense

        out = super().__call__(sample, index, epoch)
        kspace, mask, shape = self.kspace_and_mask(sample, index, epoch)
        masked = kspace if mask is None else kspace * mask + 0.0
        maps = sense_maps(masked, self.calib, str(sample.get("fname", "kspace")))
        if self.recon == "zero-filled":
            image = sense_adjoint(masked, maps)
        else:
            info: dict[str, Any] = {}
            image = cg_sense(masked[None], None if mask is None else mask[None], None if maps is None else maps[None],
                             lam=float(self.options["lam"]), max_iter=int(self.options["max_iter"]),
                             tol=float(self.options["tol"]), info=info)[0]
            self.infos.append(info)
        size = tuple(out["target"].shape[-2:])
        out["reference"] = crop_or_pad(image, size)
        return out


@torch.no_grad()
def score_reference(cfg: Any, depths: list[int]) -> tuple[dict, list, dict, dict, dict[str, Any] | None]:
    """Score the reference row ``cfg.method`` on the test split: (groups, slices, examples, zero-filled metrics,
    solver record or None); see the module docstring."""
    from mrlearn.layerwise.study import add_slices, score_volumes
    from mrlearn.physics.complex import channels_to_complex
    from mrlearn.recon.stopping import solver_record
    from mrlearn.training.data import ReconDataModule

    recon = cfg.method.get("recon", "zero-filled")
    options = reference_options(recon, cfg.method.get("options"))
    infos: list[dict[str, Any]] = []
    size = tuple(cfg.data.recon_size) if cfg.data.recon_size else None

    def factory(mask_func: Any, split: str) -> ReferenceTransform:
        return ReferenceTransform(mask_func, recon, options, infos, seed=cfg.seed, recon_size=size)

    ds = ReconDataModule(cfg, transform_factory=factory).dataset("test")
    vols: dict[str, dict[Any, list]] = {}
    for i in range(len(ds)):  # in this process: the solver infos stay here
        s = ds[i]
        scale = float(s["std"])
        zero = channels_to_complex(s["image"][None])[0].abs() * scale
        ref = s["reference"].abs().float()
        add_slices(vols, [s["fname"]], [s["slice"]], s["target"][:1],
                   {0: zero[None], **{d: ref[None] for d in depths}})
    groups, slices, examples, zero_metrics = score_volumes(vols, depths)
    return groups, slices, examples, zero_metrics, solver_record(infos)
