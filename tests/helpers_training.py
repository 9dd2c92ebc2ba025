"""Tiny phantom data and configs for the training-spine tests (seeded; 32 x 32, 4 coils, 4 slices per volume)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from mrlearn.config import ExperimentConfig, load_config


TINY_SET = ["model.chans=4", "model.num_pool_layers=2", "trainer.max_epochs=2", "trainer.val_every=1",
            "trainer.checkpoint_every_n_steps=2", "trainer.progress_bar=false", "trainer.accelerator=cpu",
            "trainer.log_every_n_steps=1", "data.batch_size=2", "data.contrasts=null"]


def tiny_dataset(root: Path) -> Path:
    """3 train / 2 val / 2 test phantom volumes (PD, 4 coils, 32 x 32, 4 slices)."""
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    opts = SimulationOptions(anatomy="phantom", matrix=(32, 32), slices=4, subjects=(3, 2, 2), contrasts=("PD",), coils=4)
    return simulate_dataset(root, opts)


def tiny_config(data: Path, out: Path, *extra: str) -> ExperimentConfig:
    return load_config("unet_demo", [f"data.root={data}", f"out_dir={out}", *TINY_SET, *extra])


def run_python(code: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -c code`` with one thread per process; returns the completed process."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=full)
