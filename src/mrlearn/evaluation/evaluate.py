"""Score reconstructions against fastMRI targets: per volume, mean and std overall and per contrast.

Targets are fastMRI files (``reconstruction_rss`` / ``reconstruction_esc``, attr ``acquisition``); predictions are
submission files (dataset ``reconstruction``) with the same file names. Crops, as fastMRI's ``evaluate.py``: a
target taller than wide (``h > w``) is centre-cropped to ``(w, w)`` (``square=False`` keeps it whole; fastMRI's
script cannot score targets wider than tall, we score them whole); the prediction is centre-cropped to the
target's size (``physics.complex.center_crop``, from ``(H - h) // 2``); a smaller prediction or a different number
of slices is an error. Scores are ``evaluation.scoring.volume_metrics``: NMSE, PSNR with ``maxval = target.max()``
of the volume, SSIM per slice with the volume max as data range, averaged over slices; summaries average over
volumes (the sample std, ``ddof = 1``, of :mod:`mrlearn.evaluation.spread`; undefined - NaN - for one volume).

Outputs (atomic writes): ``metrics.csv`` with columns ``volume, acquisition, nmse, psnr, ssim``: one row per
volume, then ``mean`` and ``std`` rows for ``all`` and for each contrast; ``metrics.json`` with the same numbers
(``volumes``, ``summary``, ``missing_predictions``, ``skipped_predictions``). Non-finite values (PSNR of a perfect prediction) are written as
``inf`` in the CSV and ``null`` in the JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrlearn.errors import input_error
from mrlearn.evaluation.scoring import METRIC_NAMES, volume_metrics
from mrlearn.evaluation.spread import sample_std, std_note
from mrlearn.io import atomic_write_text
from mrlearn.physics.complex import center_crop

H5_SUFFIXES = (".h5", ".hdf5")


@dataclass
class VolumePair:
    """One volume to score: arrays ``[S, h, w]`` or paths (target: fastMRI file; pred: submission file)."""

    volume: str
    target: np.ndarray | str | Path
    pred: np.ndarray | str | Path
    acquisition: str = ""


def _as_pair(item: VolumePair | Sequence[Any]) -> VolumePair:
    if isinstance(item, VolumePair):
        return item
    return VolumePair(*item)


def _load(value: np.ndarray | str | Path, kind: str) -> tuple[np.ndarray, str]:
    if isinstance(value, (str, Path)):
        from mrlearn.data.fastmri import read_reconstruction, read_target

        return (read_target(value) if kind == "target" else read_reconstruction(value)), str(value)
    return np.asarray(value), kind


def _crop(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return center_crop(torch.from_numpy(np.ascontiguousarray(x)), size).numpy()


def square_target(target: np.ndarray) -> np.ndarray:
    """fastMRI's evaluation crop: a target ``[S, h, w]`` with ``h > w`` centre-cropped to ``(w, w)``, else as is."""
    h, w = target.shape[-2:]
    return _crop(target, (w, w)) if h > w else target


def match_prediction(target: np.ndarray, pred: np.ndarray, where: str = "prediction") -> np.ndarray:
    """The prediction centre-cropped to the target's ``(h, w)``; errors for other slice counts or smaller images."""
    if target.ndim != 3 or pred.ndim != 3:
        raise input_error(where, f"expected volumes [slices, h, w], got target {target.shape} and prediction {pred.shape}",
                          "store one image per slice")
    if pred.shape[0] != target.shape[0]:
        raise input_error(where, f"{pred.shape[0]} slices but the target has {target.shape[0]}",
                          "reconstruct every slice of the volume")
    if pred.shape[1] < target.shape[1] or pred.shape[2] < target.shape[2]:
        raise input_error(where, f"image size {pred.shape[1:]} is smaller than the target's {target.shape[1:]}",
                          "reconstruct at (or crop to) the target size")
    if pred.shape[1:] != target.shape[1:]:
        pred = _crop(pred, target.shape[1:])
    return pred


def evaluate_volumes(pairs: Iterable[VolumePair | Sequence[Any]], square: bool = True) -> list[dict[str, Any]]:
    """Score each pair; rows ``{"volume", "acquisition", "slices", "nmse", "psnr", "ssim"}`` in input order.

    A pair is a :class:`VolumePair` or a tuple ``(volume, target, pred[, acquisition])``; target/pred are float
    arrays ``[S, h, w]`` or file paths. ``square``: fastMRI's ``(w, w)`` crop of targets taller than wide.
    """
    rows = []
    for item in pairs:
        pair = _as_pair(item)
        target, t_where = _load(pair.target, "target")
        pred, p_where = _load(pair.pred, "prediction")
        target = np.asarray(target, dtype=np.float64)
        if square and target.ndim == 3:
            target = square_target(target)
        pred = match_prediction(target, np.asarray(pred, dtype=np.float64), p_where)
        if not np.all(np.isfinite(pred)):
            raise input_error(p_where, "prediction contains NaN or Inf", "fix the reconstruction before scoring")
        if not np.all(np.isfinite(target)):
            raise input_error(t_where, "target contains NaN or Inf", "use a valid target file")
        if float(target.max()) <= 0:  # PSNR's peak and SSIM's data range are the target's maximum
            raise input_error(t_where, f"target is all zero or negative (max {float(target.max()):.3g}): PSNR and SSIM "
                              "are undefined", "score against a magnitude target (e.g. reconstruction_rss)")
        rows.append({"volume": str(pair.volume), "acquisition": str(pair.acquisition), "slices": int(target.shape[0]),
                     **volume_metrics(target, pred)})
    return rows


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"volumes": len(rows)}
    for name in METRIC_NAMES:
        vals = np.array([r[name] for r in rows], dtype=np.float64)
        mean = float(np.mean(vals)) if vals.size else math.nan
        std = sample_std(vals)
        out[name] = {"mean": mean, "std": std if math.isfinite(std) else math.nan}
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"all": stats, "by_contrast": {acquisition: stats}}``; stats ``{"volumes", metric: {"mean", "std"}}``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("acquisition", "")), []).append(r)
    return {"all": _stats(rows), "by_contrast": {k: _stats(v) for k, v in sorted(groups.items())}}


# ------------------------------------------------------------------------------------------------ folders
def _h5_files(folder: Path, option: str) -> dict[str, Path]:
    if not folder.exists():
        raise input_error(f"{option} {folder}", "folder not found", "check the path")
    if not folder.is_dir():
        raise input_error(f"{option} {folder}", "is a file, expected a folder of .h5 volumes", "pass the folder holding it")
    files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in H5_SUFFIXES}
    if not files:
        raise input_error(f"{option} {folder}", "no .h5 files in the folder", "point it at a folder of fastMRI .h5 volumes")
    return files


def _acquisition(path: Path) -> str:
    from mrlearn.data.fastmri import open_volume

    with open_volume(path) as f:
        value = f.attrs.get("acquisition", "")
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def pair_folders(target_dir: str | Path, pred_dir: str | Path, contrasts: Sequence[str] | None = None,
                 skip_missing: bool = False) -> tuple[list[VolumePair], list[str], list[str]]:
    """Pair target and prediction files by name; returns (pairs, target names without a prediction, prediction
    names without a target).

    A prediction without a target file is an error unless ``skip_missing`` (then it is left out and listed);
    ``contrasts`` keeps targets whose ``acquisition`` is listed (a contrast no target has is an error; predictions
    of other contrasts are skipped).
    """
    targets = _h5_files(Path(target_dir), "--target")
    preds = _h5_files(Path(pred_dir), "--pred")
    orphans = sorted(set(preds) - set(targets))
    if orphans and not skip_missing:
        more = f" and {len(orphans) - 1} more" if len(orphans) > 1 else ""
        raise input_error(f"--pred {Path(pred_dir) / orphans[0]}", f"no target file of that name in {target_dir}{more}",
                          "predictions must keep the target file names; --skip-missing scores the others and lists "
                          "those left out")
    preds = {n: p for n, p in preds.items() if n in targets}
    acquisitions = {name: _acquisition(path) for name, path in targets.items()}
    if contrasts:
        available = sorted(set(acquisitions.values()))
        unknown = [c for c in contrasts if c not in available]
        if unknown:
            raise input_error("--contrast", f"unknown contrast {unknown[0]!r} (no target has it)",
                              f"choose from: {', '.join(available)}")
        keep = set(contrasts)
        targets = {n: p for n, p in targets.items() if acquisitions[n] in keep}
    missing = sorted(n for n in targets if n not in preds)
    pairs = [VolumePair(n, targets[n], preds[n], acquisitions[n]) for n in sorted(targets) if n in preds]
    if not pairs:
        raise input_error(f"--pred {pred_dir}", "no prediction matches a target" + (" of the chosen contrasts" if contrasts else ""),
                          "name each prediction file like its target file")
    return pairs, missing, orphans


# ------------------------------------------------------------------------------------------------ outputs
def _finite_or_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    return x


def csv_rows(rows: list[dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-volume rows then ``mean``/``std`` rows for ``all`` and each contrast (columns volume, acquisition, metrics)."""
    out = [{"volume": r["volume"], "acquisition": r["acquisition"], **{m: r[m] for m in METRIC_NAMES}} for r in rows]
    groups = [("all", summary["all"])] + list(summary["by_contrast"].items())
    for stat in ("mean", "std"):
        for name, g in groups:
            out.append({"volume": stat, "acquisition": name, **{m: g[m][stat] for m in METRIC_NAMES}})
    return out


def write_outputs(out_dir: str | Path, rows: list[dict[str, Any]], summary: dict[str, Any],
                  missing: Sequence[str] = (), extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``metrics.csv`` and ``metrics.json`` into ``out_dir`` atomically; returns their paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise input_error(f"--out {out}", "is a file", "pass a folder for metrics.csv and metrics.json")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["volume", "acquisition", *METRIC_NAMES], lineterminator="\n")
    writer.writeheader()
    for r in csv_rows(rows, summary):
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    csv_path = atomic_write_text(out / "metrics.csv", buf.getvalue())
    payload = {"volumes": rows, "summary": summary, "missing_predictions": list(missing), **(extra or {})}
    json_path = atomic_write_text(out / "metrics.json",
                                  json.dumps(_finite_or_none(payload), indent=2, allow_nan=False) + "\n")
    return csv_path, json_path


def format_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """A plain-text table: one line per volume, then mean +- std overall and per contrast."""
    name_w = max([len("volume")] + [len(r["volume"]) for r in rows] + [len("mean (all)")])
    acq_w = max([len("acquisition")] + [len(r["acquisition"]) for r in rows])
    head = f"{'volume':<{name_w}}  {'acquisition':<{acq_w}}  {'NMSE':>17}  {'PSNR (dB)':>15}  {'SSIM':>15}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['volume']:<{name_w}}  {r['acquisition']:<{acq_w}}  {r['nmse']:>17.5f}  {r['psnr']:>15.3f}  "
                     f"{r['ssim']:>15.4f}")
    lines.append("-" * len(head))
    groups = [("all", summary["all"])] + list(summary["by_contrast"].items())
    for name, g in groups:
        label = f"mean ({g['volumes']})"
        lines.append(f"{label:<{name_w}}  {name:<{acq_w}}  "
                     f"{g['nmse']['mean']:>8.5f} ± {g['nmse']['std']:<6.4f}  "
                     f"{g['psnr']['mean']:>7.3f} ± {g['psnr']['std']:<5.2f}  "
                     f"{g['ssim']['mean']:>6.4f} ± {g['ssim']['std']:<6.4f}")
    lines.append(std_note("volumes") + " (nan: one volume)")
    return "\n".join(lines)


def evaluate_folders(target_dir: str | Path, pred_dir: str | Path, out_dir: str | Path | None = None,
                     contrasts: Sequence[str] | None = None, square: bool = True,
                     skip_missing: bool = False) -> dict[str, Any]:
    """Pair, score, summarise and write outputs (default ``out_dir``: the prediction folder; ``square``: see
    :func:`evaluate_volumes`; ``skip_missing``: see :func:`pair_folders`).

    Returns ``{"rows", "summary", "missing", "skipped", "csv", "json"}`` (``metrics.json`` lists both kinds of
    unmatched files: ``missing_predictions`` and ``skipped_predictions``).
    """
    pairs, missing, skipped = pair_folders(target_dir, pred_dir, contrasts, skip_missing)
    rows = evaluate_volumes(pairs, square)
    summary = summarise(rows)
    out = Path(out_dir) if out_dir is not None else Path(pred_dir)
    extra = {"target_dir": str(target_dir), "pred_dir": str(pred_dir), "contrasts": list(contrasts or []),
             "square_crop": bool(square), "skipped_predictions": skipped}
    from mrlearn.evaluation import seg_scoring  # labels on both sides (a joint model's output): Dice and HD95

    seg_rows = seg_scoring.score_pairs(pairs, square)
    seg = {"volumes": seg_rows, "summary": seg_scoring.summarise(seg_rows)} if seg_rows else None
    if seg:
        extra["segmentation"] = seg
    csv_path, json_path = write_outputs(out, rows, summary, missing, extra)
    return {"rows": rows, "summary": summary, "missing": missing, "skipped": skipped, "csv": csv_path, "json": json_path,
            "segmentation": seg}
