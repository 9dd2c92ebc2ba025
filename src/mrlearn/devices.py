"""Device names from users (``--device``, the API's ``device=``): one check for every entry point."""

from __future__ import annotations

from typing import Any

from mrlearn.errors import input_error


def resolve_device(name: Any, where: str = "--device") -> str:
    """A torch device name for ``name``: ``auto`` (cuda when available, else cpu), ``cpu``, ``cuda``/``gpu``,
    ``cuda:N``; one-line errors for anything else and for a GPU this machine does not have."""
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str) or not name:
        raise input_error(where, f"{name!r} is not a device name", "use cpu, cuda, cuda:N or auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "gpu":
        name = "cuda"
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise input_error(where, f"unknown device {name!r}", "use cpu, cuda, cuda:N or auto")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise input_error(where, f"{name} requested but no CUDA device is available here", "use cpu")
        if ":" in name and int(name[5:]) >= torch.cuda.device_count():
            raise input_error(where, f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)", "use cuda:0")
    return name
