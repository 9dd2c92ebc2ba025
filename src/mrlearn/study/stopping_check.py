"""The stopping check of a study: does an arm's score depend on when its training stopped?

Beside the study's runs (after them with the sequential executor, queued first with the parallel ones), one seed
(``stopping_check.seeds``: the first n of the study's seeds) of every trained arm (reference rows - ``method:
{name: reference}`` - train nothing and are left out) is run again with every patience and every cap multiplied by
``factor``: the keys named in :data:`SCALED` wherever they appear in the run's resolved
config (``trainer.early_stopping.patience`` / ``patience_samples``, ``trainer.max_steps`` / ``max_epochs`` /
``max_time``, ``method.block_patience`` / ``epochs_per_block``, ``tasks.max_samples``, ``qmri.patience``, ...;
never ``lr_patience``: the decay schedule stays, the window after it grows). A check run is an ordinary study run
with the id ``<run id>__check``: its own folder under ``OUT/runs``, resumable and skipped when finished. Runs are
seeded, so the check follows the original run's trajectory up to its stop and then trains on.

For every verdict metric (``summary.verdict_metrics``; without it the study's primary metric, the first of
``summary.metrics``, PSNR by default), per arm, grid point and group: ``difference`` = mean over the checked seeds of
``score(check) - score(run)``; ``tolerance`` = max(floor, ``tolerance_fraction`` x the width of the arm's 95 %
interval of that metric against the baseline (the narrowest over its comparisons for the baseline arm itself; the
floor alone where no interval exists). The floor is ``tolerances[metric]`` where given (e.g. ``{dice: 0.01}``), else
``tolerance_db`` (in the primary metric's units: dB for PSNR). An arm with ``|difference| > tolerance`` on any checked
metric is **stopping-sensitive**: a ``stopping_sensitive`` column of ``study.csv`` says so and all its comparisons
get no verdict.

``warm_start: true``: each check is queued right after its run and starts once that run has ended; it continues
the run from where the run's stopping rule first fired (``checkpoints/at_stop/`` of every fit,
:class:`mrlearn.engine.checkpoint.AtomicCheckpoint`; :func:`seed_from_stop`) instead of repeating the shared start
from step 0. Up to there a run and its check take the same steps - the scaled windows and caps only act after it,
and ``lr_patience`` is not scaled - so the check is the same longer run at a fraction of the cost. A fit that
starts from an earlier fit (a transfer run's fine-tuning) starts again once that one trained on. A run without
``at_stop`` (finished by an older version) is checked from step 0. Only runners that declare
``continues_from_stop`` are seeded; the others' checks start from step 0.

Study option: ``stopping_check: {seeds: 1, factor: 2, tolerance_db: 0.1, tolerance_fraction: 0.25, tolerances: {},
warm_start: false}`` - on by default for ``budget: to_convergence``, off for other budgets; ``stopping_check: null``
turns it off.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any, Callable

from mrlearn.errors import input_error

DEFAULTS = {"seeds": 1, "factor": 2.0, "tolerance_db": 0.1, "tolerance_fraction": 0.25, "tolerances": {},
            "warm_start": False}
#: config keys scaled by ``factor`` in a check run (patience windows and caps, wherever they appear)
SCALED = ("patience", "patience_samples", "block_patience", "max_steps", "max_epochs", "max_time", "max_samples",
          "epochs_per_block", "max_iter")
SUFFIX = "__check"


def parse_stopping_check(value: Any, budget: str | None, where: str) -> dict[str, float] | None:
    """The ``stopping_check`` option: None (off) or the settings (defaults filled); ``value`` is the raw study
    value (``...`` when the key is absent: on for ``budget: to_convergence``)."""
    if value is ...:
        return dict(DEFAULTS) if budget == "to_convergence" else None
    if value is None or value is False:
        return None
    if value is True:
        return dict(DEFAULTS)
    if not isinstance(value, dict) or set(value) - set(DEFAULTS):
        raise input_error(f"{where}: stopping_check", f"expected null or a mapping with keys {', '.join(DEFAULTS)}",
                          "e.g. stopping_check: {seeds: 1, factor: 2, tolerance_db: 0.1, tolerance_fraction: 0.25}")
    out = {**DEFAULTS, **value}
    tol = out["tolerances"]
    if not isinstance(tol, dict) or not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                                            and math.isfinite(v) and v >= 0 for k, v in tol.items()):
        raise input_error(f"{where}: stopping_check.tolerances", f"{tol!r} is not a mapping of metric names to numbers >= 0",
                          "e.g. tolerances: {dice: 0.01}")
    out["tolerances"] = {k: float(v) for k, v in tol.items()}
    if not isinstance(out["warm_start"], bool):
        raise input_error(f"{where}: stopping_check.warm_start", f"{out['warm_start']!r} is not true/false",
                          "true: each check continues its run from where it stopped; false: from step 0")
    for key, low in (("seeds", 1), ("factor", 1), ("tolerance_db", 0), ("tolerance_fraction", 0)):
        v = out[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (
            v > low if key == "factor" else v >= low)
        if not ok or (key == "seeds" and int(v) != v):
            need = {"seeds": "an integer >= 1", "factor": "a number > 1"}.get(key, "a number >= 0")
            raise input_error(f"{where}: stopping_check.{key}", f"{v!r} is not {need}", f"e.g. {DEFAULTS[key]}")
    out["seeds"] = int(out["seeds"])
    return out


def _seconds(value: Any) -> float:
    if isinstance(value, str):  # DD:HH:MM:SS
        d, h, m, s = (int(x) for x in value.split(":"))
        return float(((d * 24 + h) * 60 + m) * 60 + s)
    return float(value)


def _scale(key: str, value: Any, factor: float) -> Any:
    """``value`` of a :data:`SCALED` key times ``factor`` (ints stay ints; -1 / None / 0: no cap, unchanged)."""
    if isinstance(value, dict):
        return {k: _scale(key, v, factor) for k, v in value.items()}
    if isinstance(value, bool) or value is None:
        return value
    if key == "max_time":
        return _seconds(value) * factor
    if isinstance(value, int):
        return int(math.ceil(value * factor)) if value > 0 else value
    if isinstance(value, float):
        return value * factor if value > 0 else value
    return value


def scaled_overrides(cfg: Any, factor: float) -> dict[str, Any]:
    """Dotted key -> scaled value for every :data:`SCALED` key set in the resolved config ``cfg``."""
    from mrlearn.config import config_to_dict

    found: dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                key = f"{path}.{k}" if path else str(k)
                if k in SCALED and v is not None:
                    new = _scale(str(k), v, factor)
                    if new != v:
                        found[key] = new
                else:
                    walk(v, key)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}.{i}")

    walk(config_to_dict(cfg), "")
    return found


def is_trained(cfg: Any) -> bool:
    """False for a study's reference rows (``method: {name: reference}``), which train nothing."""
    method = getattr(cfg, "method", None)
    return not (isinstance(method, dict) and method.get("name") == "reference")


def check_runs(spec: Any, runs: list, configs: dict[str, Any]) -> list:
    """The check runs of ``spec`` (empty when its ``stopping_check`` is off): one :class:`RunSpec` per checked seed
    of every trained arm and grid point, with the scaled keys added to its overrides."""
    settings = getattr(spec, "stopping_check", None)
    if not settings:
        return []
    seeds = set(list(spec.seeds)[: int(settings["seeds"])])
    out = []
    for run in runs:
        cfg = configs[run.run_id]
        if run.seed not in seeds or not is_trained(cfg):
            continue
        scaled = scaled_overrides(cfg, float(settings["factor"]))
        if scaled:
            kept = {k: v for k, v in run.overrides.items() if k not in scaled}  # the scaled values are set last
            out.append(dataclasses.replace(run, run_id=run.run_id + SUFFIX, overrides={**kept, **scaled},
                                           legacy_id=None))
    return out


def seed_from_stop(out: Path, check_id: str, cfg: Any, keep: str = "") -> bool:
    """Seed the folder of check run ``check_id`` (empty but for the lease file ``keep``) with its run's stop.

    Every fit's ``checkpoints/at_stop/`` goes to the same place below the folder (as ``last.ckpt`` and
    ``best*.ckpt``), with the run's ``config.yaml`` and a ``run.json`` of status ``warm_start``, so that the check
    resumes there (:func:`mrlearn.study.resume.prepare_folder`). False (the check starts from step 0) when the run
    is not finished, kept no ``at_stop``, or the folder is not empty."""
    from mrlearn.config import dump_config
    from mrlearn.engine.checkpoint import AT_STOP
    from mrlearn.io import atomic_write_text, write_json
    from mrlearn.study.results import is_finished
    from mrlearn.study.resume import WARM

    original, folder = out / "runs" / check_id.removesuffix(SUFFIX), out / "runs" / check_id
    stops = sorted(p for p in original.rglob(AT_STOP) if p.is_dir() and p.parent.name == "checkpoints")
    if not is_finished(original) or not stops or (folder.exists() and any(p.name != keep for p in folder.iterdir())):
        return False
    for stop in stops:
        target = folder / stop.parent.relative_to(original)
        target.mkdir(parents=True, exist_ok=True)
        for src in stop.iterdir():
            shutil.copy2(src, target / ("last.ckpt" if src.name == "state.ckpt" else src.name))
    atomic_write_text(folder / "config.yaml", dump_config(cfg))
    write_json(folder / "run.json", {"status": WARM, "forked_from": original.name, "attempts": 0})
    return True


def _score(out: Path, run_id: str, group: str, metric: str) -> float:
    from mrlearn.study.results import read_result

    value = ((read_result(out / "runs" / run_id) or {}).get("groups", {}).get(group) or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def check_metrics(spec: Any) -> list[str]:
    """The metrics the check compares: ``summary.verdict_metrics``, else the primary metric (first of
    ``summary.metrics``, PSNR by default)."""
    return list(spec.summary.get("verdict_metrics") or [(spec.summary.get("metrics") or ["psnr"])[0]])


def _widths(comparisons: list[dict[str, Any]], baseline: str | None, metric: str,
            several: bool) -> dict[tuple[str, str, str], float]:
    """(arm, point label, group) -> interval width of its comparison on ``metric``; the baseline: its narrowest one."""
    widths: dict[tuple[str, str, str], float] = {}
    for c in comparisons:
        if several and c.get("metric", metric) != metric:
            continue
        w = float(c.get("ci95_high", math.nan)) - float(c.get("ci95_low", math.nan))
        if not w == w:
            continue
        widths[(c["arm"], c["point"], c["group"])] = w
        if baseline:
            key = (baseline, c["point"], c["group"])
            widths[key] = min(widths.get(key, math.inf), w)
    return widths


def stopping_table(spec: Any, out: Path, runs: list, rows: list[dict[str, Any]],
                   comparisons: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The check's table (one entry per checked metric, arm, grid point and group) and, in place, each study row's
    ``stopping_sensitive`` (True/False where checked - True when any checked metric is sensitive -, None
    elsewhere). ``comparisons()`` gives the paired differences against the baseline (their interval widths set the
    tolerances; with several metrics each carries ``metric``). Empty when nothing was checked."""
    from mrlearn.study.compare import point_label

    settings = getattr(spec, "stopping_check", None)
    if not settings:
        return []
    metrics = check_metrics(spec)
    several = len(metrics) > 1
    by_id = {r.run_id: r for r in runs}
    pairs: dict[tuple[str, str, str], list[tuple[int, str]]] = {}
    for row in rows:
        run = by_id.get(row["run_id"])
        if run is None or not (out / "runs" / (run.run_id + SUFFIX) / "result.json").is_file():
            continue
        pairs.setdefault((run.arm, point_label(run.point), row["group"]), []).append((run.seed, run.run_id))
    if not pairs:
        return []
    compared = comparisons()
    table: list[dict[str, Any]] = []
    sensitive: dict[tuple[str, str, str], bool | None] = {}
    factor = f"x{settings['factor']:g}"
    for metric in metrics:
        widths = _widths(compared, spec.summary.get("baseline"), metric, several)
        floor = float((settings.get("tolerances") or {}).get(metric, settings["tolerance_db"]))
        for (arm, point, group), ids in pairs.items():
            items = [(seed, _score(out, rid, group, metric), _score(out, rid + SUFFIX, group, metric)) for seed, rid in ids]
            diffs = [c - s for _, s, c in items if c == c and s == s]
            if several and not diffs:
                continue  # this arm does not report the metric (e.g. no image metrics)
            diff = sum(diffs) / len(diffs) if diffs else math.nan
            width = widths.get((arm, point, group), math.nan)
            tol = max(floor, float(settings["tolerance_fraction"]) * width if width == width else 0.0)
            flag = bool(abs(diff) > tol) if diff == diff else None
            key = (arm, point, group)
            if flag is not None:
                sensitive[key] = bool(sensitive.get(key)) or flag
            else:
                sensitive.setdefault(key, None)
            entry = {"arm": arm, "point": point, "group": group, "seeds": ", ".join(str(s) for s, _, _ in items)}
            if several:
                entry.update({"metric": metric, "score": sum(s for _, s, _ in items) / len(items),
                              f"score_at_{factor}": sum(c for _, _, c in items) / len(items)})
            else:
                entry.update({metric: sum(s for _, s, _ in items) / len(items),
                              f"{metric}_at_{factor}": sum(c for _, _, c in items) / len(items)})
            entry.update({"difference": diff, "tolerance": tol, "interval_width": width,
                          "sensitive": "-" if flag is None else ("yes" if flag else "no")})
            table.append(entry)
    for row in rows:
        run = by_id.get(row["run_id"])
        if run is not None:
            row["stopping_sensitive"] = sensitive.get((run.arm, point_label(run.point), row["group"]))
    return table


def caption(spec: Any) -> str:
    s = spec.stopping_check
    metrics = check_metrics(spec)
    named = ", ".join(metrics)
    floors = ", ".join(f"{m}: {float((s.get('tolerances') or {}).get(m, s['tolerance_db'])):g}" for m in metrics)
    how = "continued from where it stopped" if s.get("warm_start") else "run again"
    return (f"Seed(s) {', '.join(str(x) for x in list(spec.seeds)[: s['seeds']])} of every trained arm {how} with "
            f"every patience and cap x{s['factor']:g} (run ids <run id>{SUFFIX}). difference = score at x"
            f"{s['factor']:g} minus score as run ({named}; mean over the checked seeds); tolerance = max(floor "
            f"({floors}), {s['tolerance_fraction']:g} x the width of the arm's 95 % interval against the baseline). "
            "Sensitive arms (|difference| > tolerance on any checked metric) get no verdict: their result depends "
            "on when training stopped.")
