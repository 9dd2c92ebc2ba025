"""How many data-loader worker processes to start: ``data.num_workers`` capped at the CPUs this process may use.

More workers than CPUs only compete for them (and torch's DataLoader warns about it on every loader). The cap is
said once per process on stderr; the config keeps the number asked for (a resume on a larger machine uses it).
"""

from __future__ import annotations

import os
import sys

_SAID: set[tuple[int, int]] = set()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def loader_workers(requested: int, where: str = "data.num_workers") -> int:
    """``requested`` capped at :func:`available_cpus` (0 stays 0: load in the main process)."""
    cpus = available_cpus()
    if requested <= cpus:
        return int(requested)
    if (requested, cpus) not in _SAID:
        _SAID.add((requested, cpus))
        print(f"mrlearn: note: {where} {requested} is more than the {cpus} CPUs available: using {cpus} loader "
              f"workers", file=sys.stderr, flush=True)
    return cpus
