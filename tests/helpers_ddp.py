"""Start one fitting script as 1 plain process or as N DDP ranks on CPU (gloo), as a cluster launcher would.

With ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set, Lightning joins the ranks
started here instead of re-running the script, so one interpreter per rank can fit several configs in turn on one
process group (the torch + Lightning start-up is paid once per rank, not once per config).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

DDP_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(script: Path, args: list[str], world: int, cwd: Path, timeout: float = 540) -> list[str]:
    """Run ``python script *args`` as ``world`` processes (1: plain); returns each rank's stdout; asserts exit 0."""
    env = {k: v for k, v in os.environ.items() if k not in DDP_ENV}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if world > 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world), NODE_RANK="0")
    cmd = [sys.executable, str(script), *args]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)} if world > 1 else env)
             for r in range(world)]
    outs = []
    for rank, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        assert proc.returncode == 0, f"rank {rank} of {world}: {err[-3000:]}"
        outs.append(out)
    return outs


def phantom_data(folder: Path, contrasts: tuple[str, ...], subjects: tuple[int, int, int]) -> Path:
    """A tiny phantom dataset for DDP tests: 24 x 24, 2 coils, 2 slices per volume (train / val / test subjects)."""
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    opts = SimulationOptions(anatomy="phantom", matrix=(24, 24), slices=2, subjects=subjects, contrasts=contrasts,
                             coils=2)
    return Path(simulate_dataset(folder / "data", opts))


def fit_one_and_two(folder: Path, script_text: str, args: list[str]) -> Path:
    """Write ``script_text`` to ``folder/fit.py`` and run it as 1 process (output folder ``one``) and as 2 DDP ranks
    (``two``): ``python fit.py OUT *args``; returns ``folder``."""
    script = folder / "fit.py"
    script.write_text(script_text)
    for world, out in ((1, "one"), (2, "two")):
        launch(script, [str(folder / out), *args], world, folder)
    return folder
