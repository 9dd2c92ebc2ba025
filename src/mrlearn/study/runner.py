"""Run a study: every run in its own folder, finished runs skipped, then ``study.csv`` and ``report.html``.

Layout of ``OUT`` (default ``runs/<study name>``)::

    OUT/study.yaml               the study as run (resolved, with its budget policy and executor)
    OUT/runs/<run id>/           the run folder (config.yaml, run.json, checkpoints, metrics.json, ...)
    OUT/runs/<run id>/result.json   written last (atomic) -> the run is finished (see ``study.results``)
    OUT/study.csv, OUT/paired_differences.csv, OUT/report.html

Resumable and shareable: a finished run is skipped; a run another live process holds is left to it; an unfinished
folder whose holder is gone resumes from its last checkpoint (or, without one, starts again: ``study.resume``). A
run that fails is logged in one line and the others go on; the study then ends with a one-line list of the failed
runs (an error: exit status 2) after writing the summary of the finished ones. Every run is seeded, so a rerun of a
killed study gives the same numbers. Runs go through an executor (``sequential``, ``local`` worker processes or
``ray``: ``study.executors``); all three give the same ``study.csv``. The stopping check's runs
(``study.stopping_check``) follow the study's runs with the sequential executor and are queued before them with
the parallel ones (they are the longest: fewer workers wait on a late long run); a warm check (``warm_start``)
is queued right after its run and starts once that run has ended (``Job.after``).

Runners (registry kind ``runner``; the study's ``runner``, ``auto``: ``mtl`` when the config has a ``tasks`` section,
else ``train``) take the run's ExperimentConfig and return a :class:`RunOutcome`. A capability registers its runner
with ``@register("runner", name)`` (or :func:`register_runner`) and declares the module in the entry-point group
``mrlearn.runner``. A runner that takes a ``resume`` keyword continues an unfinished run folder from its checkpoints
(every shipped runner does; one of several fits keeps them in phase folders below a run folder of its own,
:mod:`mrlearn.training.phases`); others start such a run again. A study file can name registered runners only,
never a module or function of its own choosing (a study file from someone else cannot make mrlearn import or call
arbitrary code).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from mrlearn import registry
from mrlearn.io import safe_child
from mrlearn.errors import MrlearnError, input_error
from mrlearn.io import atomic_write_text
from mrlearn.study.execute import Job, study_files_lock
from mrlearn.study.executors import check_executor, default_threads, execute
from mrlearn.study.results import RunOutcome, is_finished, read_result, read_slices, write_outcome  # noqa: F401 (re-exported)
from mrlearn.study.spec import StudySpec, adopt_legacy_ids, run_config
from mrlearn.study.stopping_check import SUFFIX, check_runs

Runner = Callable[[Any], RunOutcome]


def register_runner(name: str, fn: Runner) -> Runner:
    """Register a study runner (a callable ``ExperimentConfig -> RunOutcome``) as registry ``("runner", name)``."""
    return registry.register("runner", name)(fn)


def get_runner(name: str, cfg: Any) -> Runner:
    """The runner called ``name`` (``auto`` picks ``mtl`` or ``train`` from ``cfg``)."""
    if name == "auto":
        name = "mtl" if "tasks" in getattr(cfg, "extra", {}) else "train"
    fn = registry.find("runner", name) if isinstance(name, str) and name.isidentifier() else None
    if fn is None:  # a study file names registered runners only: never a module or callable of its own choosing
        raise input_error("study: runner", f"unknown runner {name!r} (study files name registered runners only)",
                          f"choose one of: auto, {', '.join(registry.available('runner'))}; code registers its own "
                          "with mrlearn.study.register_runner")
    return fn


@registry.register("runner", "train")
def train_runner(cfg: Any, resume: bool = False, callbacks: Sequence[Any] = ()) -> RunOutcome:
    """The plain ``mrlearn train`` path, then the weights it reports (best by validation unless
    ``trainer.final_weights: last``) scored on the ``test`` split (group ``all``; per-slice rows, one example; the
    noiseless metrics too where simulated data have them): the split that selected the model is never scored.
    ``resume``: continue the run folder from its ``checkpoints/last.ckpt`` (a lost worker, an interrupted study);
    ``callbacks``: extra Lightning callbacks for the fit (a runner of one's own can wrap this one)."""
    import torch

    from mrlearn.data.sample import Batch, as_batch
    from mrlearn.evaluation.scoring import score_batches
    from mrlearn.training.runner import make_datamodule, train

    result = train(cfg, resume=resume, callbacks=callbacks)
    module = result.module
    module.eval()
    device = next((p.device for p in module.parameters()), torch.device("cpu"))

    def reconstruct(batch: Any) -> Any:
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return module.reconstruct(as_batch(moved) if isinstance(batch, Batch) else moved)

    groups, slices, examples = score_batches(reconstruct, make_datamodule(cfg, module).eval_loader("test"))
    if not groups:
        raise input_error("data.test", f"the test split ({cfg.data.test}) has no volume with a target to score",
                          "name a folder of fully sampled volumes as data.test")
    return RunOutcome(groups=groups, slices=slices, examples=examples)


def run_resources(spec: StudySpec, cfg: Any, executor: str, workers: int | None) -> dict[str, float]:
    """What one run asks for: ``cpus`` (torch threads) and ``gpus`` (may be fractional).

    ``spec.resources`` wins; otherwise, for a run on ``n`` processes (``trainer.devices``, DDP:
    :mod:`mrlearn.study.ranks`), ``n`` CPUs under Ray (else the machine's cores shared among the local workers, then
    among the run's processes) and ``n`` GPUs when ``trainer.accelerator`` is ``gpu``/``cuda`` (else none).
    """
    from mrlearn.study.ranks import process_count

    n = process_count(cfg)
    trainer = getattr(cfg, "trainer", None)
    gpus = float(n) if trainer is not None and str(getattr(trainer, "accelerator", "")) in ("gpu", "cuda") else 0.0
    cpus = float(n) if executor == "ray" else float(default_threads(workers or 1))
    return {"cpus": float(spec.resources.get("cpus", cpus)), "gpus": float(spec.resources.get("gpus", gpus))}


def check_finished_runs_match(configs: dict[str, Any], out: Path) -> None:
    """A finished run is reused only if it ran the config the study asks for now: otherwise (e.g. a rerun with another
    ``--set``) a one-line error names the run and the first differing key, before any run starts."""
    from mrlearn.config import dump_config
    from mrlearn.engine.runfolder import COSMETIC_CHANGES, config_changes
    from mrlearn.study.paths import absolute_config_text

    for run_id, cfg in configs.items():
        folder = out / "runs" / run_id
        result = read_result(folder)
        old = (result or {}).get("config")
        if old is None and result is not None and (folder / "config.yaml").is_file():  # runs of earlier versions
            old = (folder / "config.yaml").read_text(encoding="utf-8")
        if old is None:
            continue
        changes = config_changes(absolute_config_text(old), dump_config(cfg), COSMETIC_CHANGES)
        if changes:
            key, old, new = changes[0]
            more = f" and {len(changes) - 1} more" if len(changes) > 1 else ""
            raise input_error(folder, f"finished with another setting than the study asks for now ({key}: {old!r} -> "
                              f"{new!r}{more}); its results would be reported under the new setting",
                              f"use another --out for the new setting, or delete {folder} to run it again")


def write_study_yaml(spec: StudySpec, out: Path, executor: str) -> None:
    import yaml

    atomic_write_text(out / "study.yaml", yaml.safe_dump({
        "name": spec.name, "base": spec.base if isinstance(spec.base, dict) else str(spec.base), "set": spec.set,
        "seeds": spec.seeds, "grid": spec.grid, "arms": spec.arms, "runner": spec.runner, "summary": spec.summary,
        "budget": spec.budget or "not declared", "resources": spec.resources, "stopping_check": spec.stopping_check,
        "executor": executor}, sort_keys=False))


def recorded_executor(out: Path, default: str) -> str:
    """The executor ``OUT/study.yaml`` says the runs used (a summary-only pass keeps it), else ``default``."""
    import yaml

    try:
        recorded = yaml.safe_load((out / "study.yaml").read_text(encoding="utf-8")).get("executor")
    except (OSError, AttributeError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return default
    return recorded if isinstance(recorded, str) else default


def run_study(spec: StudySpec, out_dir: str | Path | None = None, log: Callable[[str], None] = print,
              only_summary: bool = False, executor: str = "sequential", workers: int | None = None,
              address: str | None = None) -> Path:
    """Run every run of ``spec`` not finished yet, then write ``study.csv`` and ``report.html``; returns ``OUT``."""
    from mrlearn.study.checks import check_budget, check_processes, check_slice_counts
    from mrlearn.study.summary import write_summary

    check_executor(executor)
    out = (Path(out_dir) if out_dir else safe_child(Path("runs"), spec.name, f"{spec.path or spec.name}: name")).absolute()
    runs = adopt_legacy_ids(spec.runs(), out / "runs")  # study folders of earlier versions keep their run ids
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise MrlearnError(f"{spec.path or spec.name}: two runs get the same id; give the grid values distinct names")
    for rid in ids:
        safe_child(out / "runs", rid, f"{spec.path or spec.name}: run id")
    configs = {r.run_id: run_config(spec, r, out / "runs" / r.run_id) for r in runs}  # validate all before running any
    check_budget(spec, configs)
    if not only_summary:
        check_processes(configs)
        check_slice_counts(configs, log)
    checks = check_runs(spec, runs, configs)  # the stopping check's reruns (study.stopping_check), validated too
    for run in checks:
        configs[run.run_id] = run_config(spec, run, safe_child(out / "runs", run.run_id, f"{spec.name}: run id"))
    check_finished_runs_match(configs, out)
    with study_files_lock(out):
        write_study_yaml(spec, out, recorded_executor(out, executor) if only_summary else executor)
    busy: list[str] = []
    failed: list[tuple[str, str]] = []
    if not only_summary:
        owner = uuid.uuid4().hex  # this study process: its leases tell a retried run its own earlier attempt
        scaled = f"every patience and cap x{spec.stopping_check['factor']:g}" if checks else ""
        if checks and spec.stopping_check.get("warm_start"):  # each check right after its run, started once it ends
            log(f"stopping check: {len(checks)} run(s) with {scaled}, each continuing its run from where it stopped")
            by_run = {c.run_id.removesuffix(SUFFIX): c for c in checks}
            queue = [r for run in runs for r in (run, by_run.get(run.run_id)) if r is not None]
            run_jobs(spec, queue, configs, out, log, executor, workers, address, busy, failed, owner, warm=True)
        elif executor == "sequential" or not checks:  # the study's own runs first, their results soonest
            run_jobs(spec, runs, configs, out, log, executor, workers, address, busy, failed, owner)
            if checks:
                log(f"stopping check: {len(checks)} run(s) with {scaled}")
                run_jobs(spec, checks, configs, out, log, executor, workers, address, busy, failed, owner)
        else:  # one queue, the longest (check) runs first: no worker idles at a barrier or waits on a late long run
            log(f"stopping check: {len(checks)} run(s) with {scaled}, queued first")
            run_jobs(spec, checks + runs, configs, out, log, executor, workers, address, busy, failed, owner)
    with study_files_lock(out):
        write_summary(spec, out, runs, busy=busy)
    if busy:
        log(f"{len(busy)} run(s) are being run by another process; rerun this command when they finish to "
            "summarise them")
    if failed:
        ids = ", ".join(rid for rid, _ in failed)
        raise MrlearnError(f"{spec.path or spec.name}: {len(failed)} run(s) failed: {ids} (first: {failed[0][1]}; each "
                           "one's error and log above; the summary holds the finished runs only); fix the cause and "
                           "rerun the command: finished runs are kept, unfinished ones resume from their checkpoints")
    return out


def run_jobs(spec: StudySpec, runs: list[Any], configs: dict[str, Any], out: Path, log: Callable[[str], None],
             executor: str, workers: int | None, address: str | None, busy: list[str], failed: list[tuple[str, str]],
             owner: str | None = None, warm: bool = False) -> None:
    """Run the unfinished ``runs`` through ``executor`` (progress lines ``[k/n] <run id>``), each with the config
    built here (paths absolute); the ids of runs held by another live process are added to ``busy``, ``(id, message)``
    of runs that failed (each logged in one line as it fails) to ``failed``; the other runs always go on."""
    jobs = []
    for i, run in enumerate(runs, 1):
        if is_finished(out / "runs" / run.run_id):
            log(f"[{i}/{len(runs)}] {run.run_id}: finished before, skipped")
            continue
        cfg = configs[run.run_id]
        res = run_resources(spec, cfg, executor, workers)
        threads = None if executor == "sequential" else max(1, int(res["cpus"]))
        after = run.run_id.removesuffix(SUFFIX) if warm and run.run_id.endswith(SUFFIX) else None
        jobs.append(Job(spec, run, str(out), get_runner(spec.runner, cfg), i, len(runs), threads, res, cfg, owner, after))
    if jobs and executor != "sequential":
        log(f"{len(jobs)} run(s) to do with the {executor} executor" + (f" ({workers} workers)" if workers else ""))
    def on_done(job: Job, result: dict[str, Any]) -> None:
        head = f"[{job.index}/{job.total}] {job.run.run_id}"
        status = result.get("status")
        for note in result.get("notes", []):
            log(f"{head}: {note}")
        if status == "finished":
            groups = ", ".join(f"{g} {_headline(m)}" for g, m in result["groups"].items())
            log(f"{head}: done in {result['seconds']:.0f} s ({groups})")
        elif status == "busy":
            busy.append(job.run.run_id)
            log(f"{head}: {result['message']}")
        elif status == "error":
            failed.append((job.run.run_id, str(result["message"])))
            log(f"{head}: failed: {str(result['message']).removeprefix(f'study run {job.run.run_id}: ')}")
        else:
            log(f"{head}: {result.get('message', status)}")

    def on_start(job: Job) -> None:
        log(f"[{job.index}/{job.total}] {job.run.run_id}: running")

    execute(jobs, on_done, executor, workers, address, on_start)


def _headline(metrics: dict[str, Any]) -> str:
    """One metric of a group for the progress line: PSNR where the runner reports it, else its first metric."""
    if "psnr" in metrics:
        return f"PSNR {metrics['psnr']:.2f}"
    key = next((k for k, v in metrics.items() if isinstance(v, (int, float))), None)
    return f"{key} {metrics[key]:.3g}" if key else "no metrics"
