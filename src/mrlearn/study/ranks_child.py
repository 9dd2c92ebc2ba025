"""One rank of a study's multi-device run: ``python -m mrlearn.study.ranks_child SPEC`` (:mod:`mrlearn.study.ranks`).

The study driver starts rank 0; Lightning's launcher starts the others with the same command line and ``LOCAL_RANK``
set. Every rank loads the run's config and calls the runner named in ``SPEC`` (``resume=True`` when resuming); rank 0
alone reports to the spec's folder: ``outcome.json`` and ``examples.npz`` (the runner's outcome), ``error.json``
(one line and the traceback) or ``interrupted.json`` (a signal). SIGTERM/SIGHUP outside training raise
:class:`~mrlearn.errors.RunInterrupted` (inside, :mod:`mrlearn.engine.signals` saves a checkpoint first); rank 0
stops itself the same way once the driver that started it is gone.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from mrlearn.errors import MrlearnError, RunInterrupted, input_error


def _write_outcome(folder: Path, outcome: Any) -> None:
    import numpy as np

    from mrlearn.io import write_json

    if outcome.examples:
        arrays = {f"{g}/{k}": np.asarray(v) for g, d in outcome.examples.items() for k, v in d.items()}
        np.savez(folder / "examples.npz", **arrays)
    write_json(folder / "outcome.json", {"groups": outcome.groups, "slices": outcome.slices, "extra": outcome.extra})


def _report(path: Path, obj: dict[str, Any]) -> None:
    from mrlearn.io import write_json

    write_json(path, obj)


def _interrupt(signum: int, frame: Any) -> None:
    raise RunInterrupted(signum, "outside a training step", None, "the same command again")


def _watch_parent(parent: int) -> None:
    """Stop this process (as SIGTERM does: a checkpoint at the next step) once the study driver is gone."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="mrlearn-parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    """One rank of a study's multi-device run (module docstring); rank 0 reports to the driver's folder."""
    rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by Lightning's launcher for the ranks it starts
    spec_path = Path(argv[0])
    folder = spec_path.parent
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _interrupt)
    if rank == 0 and os.name == "posix":
        _watch_parent(int(spec["parent"]))
    try:
        import torch

        from mrlearn import registry
        from mrlearn.config import load_config
        from mrlearn.progress import progress_context

        torch.set_num_threads(int(spec["threads"]))
        cfg = load_config(spec["config"])
        runner = registry.find("runner", spec["runner"])
        if runner is None:
            raise input_error("study: runner", f"{spec['runner']!r} is registered in the study's process only, so "
                              "the processes of a multi-device run cannot find it",
                              registry.plugin_advice([spec.get("module") or "__main__"]))
        with progress_context(spec.get("label"), spec.get("progress_every")):
            outcome = runner(cfg, resume=True) if spec["resume"] else runner(cfg)
        if rank == 0:
            _write_outcome(folder, outcome)
        return 0
    except (RunInterrupted, KeyboardInterrupt) as exc:
        if not isinstance(exc, RunInterrupted):
            exc = RunInterrupted(signal.SIGINT, "outside a training step", None, "the same command again")
        if rank == 0:
            _report(folder / "interrupted.json", {"signum": exc.signum, "where": exc.where, "resume": exc.resume,
                                                  "checkpoint": str(exc.checkpoint) if exc.checkpoint else None})
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - reported to the driver as the run's one-line failure
        first = (str(exc).strip().splitlines() or [""])[0]
        line = first if isinstance(exc, MrlearnError) else f"{type(exc).__name__}: {first}"
        if rank == 0:
            _report(folder / "error.json", {"line": line, "log": "".join(traceback.format_exception(exc))})
        else:
            print(f"mrlearn: rank {rank}: {line}", file=sys.stderr, flush=True)
        return 1

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
