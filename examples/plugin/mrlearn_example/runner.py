"""``runner: timed_train`` in a study file: mrlearn's ``train`` runner, plus the run's wall time in its result.

A runner is a callable ``ExperimentConfig -> RunOutcome`` registered as kind ``runner``; the study runner calls it
once per run (every executor: sequential, local workers, Ray) and writes what it returns.
"""

from __future__ import annotations

import time
from typing import Any

from mrlearn.registry import register
from mrlearn.study.runner import train_runner
from mrlearn.study.results import RunOutcome


@register("runner", "timed_train")
def timed_train(cfg: Any) -> RunOutcome:
    """Train and score as ``train`` does; ``extra["train_seconds"]`` is the wall time of the whole run."""
    t0 = time.perf_counter()
    outcome = train_runner(cfg)
    outcome.extra["train_seconds"] = round(time.perf_counter() - t0, 2)
    return outcome
