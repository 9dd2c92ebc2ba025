"""Where a run's processes come from: one machine, several (``trainer.num_nodes``), SLURM or ``torchrun``.

Lightning finds the cluster environment itself (``torchrun`` / TorchElastic variables, SLURM's ``SLURM_*``
variables, or its own launcher on one machine); mrlearn only adds SLURM's pre-emption handling:

* Under a SLURM batch job (``sbatch``; not an interactive ``srun --pty bash``), :func:`cluster_plugins` gives
  Lightning's :class:`~lightning.fabric.plugins.environments.SLURMEnvironment` with ``auto_requeue``: on the
  requeue signal (``SIGUSR1``, which ``#SBATCH --signal=USR1@90`` sends 90 s before the time limit or a pre-emption)
  Lightning writes ``<run>/hpc_ckpt_<n>.ckpt`` and calls ``scontrol requeue $SLURM_JOB_ID``.
* When SLURM starts the job again (``SLURM_RESTART_COUNT`` >= 1), ``mrlearn train`` resumes the run folder by
  itself (:func:`requeued`), from the newest complete checkpoint: ``checkpoints/last.ckpt`` (written at step
  boundaries and on SIGTERM) or Lightning's newest ``hpc_ckpt_<n>.ckpt`` (:func:`newest_checkpoint`).

``MRLEARN_SLURM_REQUEUE=0`` turns the SLURM handling off (e.g. when the job script does its own requeueing).
``MRLEARN_LOCAL_RANKS=1`` (set by a study for the multi-device runs it starts, :mod:`mrlearn.study.ranks`) gives
Lightning its ``LightningEnvironment``: Lightning starts the ranks on this machine itself, whatever cluster (SLURM,
torchrun) the study runs in.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any, Callable


def process_rank() -> int:
    """This process's global rank as the launcher set it (Lightning's DDP launcher, torchrun, SLURM via Lightning:
    ``RANK`` / ``LOCAL_RANK``), else 0. Known before any Trainer exists, so a run folder can be opened by rank 0 only."""
    return int(os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or 0)


def in_slurm_batch_job() -> bool:
    """True inside a SLURM job step that Lightning treats as managed (not an interactive shell)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect() and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def cluster_plugins() -> list[Any]:
    """Lightning plugins for the cluster this process runs on (empty: let Lightning decide)."""
    if os.environ.get("MRLEARN_LOCAL_RANKS") == "1":
        from lightning.fabric.plugins.environments import LightningEnvironment

        return [LightningEnvironment()]
    if os.environ.get("MRLEARN_SLURM_REQUEUE", "1") == "0" or not in_slurm_batch_job():
        return []
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)]


def requeued() -> bool:
    """True when SLURM restarted this job after a requeue (``SLURM_RESTART_COUNT`` >= 1)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0")) >= 1
    except ValueError:
        return False


def _step(path: Path, load: Callable[[Path], dict[str, Any]]) -> int | None:
    try:
        return int(load(path).get("global_step", -1))
    except Exception:  # noqa: BLE001 - a truncated or foreign file is simply not a candidate
        return None


def newest_checkpoint(run_dir: Path, load: Callable[[Path], dict[str, Any]]) -> Path | None:
    """The loadable checkpoint of ``run_dir`` with the most optimizer steps among ``checkpoints/last.ckpt`` and
    Lightning's ``hpc_ckpt_<n>.ckpt`` (ties: ``last.ckpt``, written at a step boundary); None when there is none."""
    candidates = [run_dir / "checkpoints" / "last.ckpt"]
    hpc = [p for p in run_dir.glob("hpc_ckpt_*.ckpt") if re.fullmatch(r"hpc_ckpt_\d+\.ckpt", p.name)]
    candidates += sorted(hpc, key=lambda p: int(p.stem.rsplit("_", 1)[1]), reverse=True)
    best: tuple[int, Path] | None = None
    for path in candidates:
        if path.is_file():
            step = _step(path, load)
            if step is not None and (best is None or step > best[0]):
                best = (step, path)
    return best[1] if best else None
