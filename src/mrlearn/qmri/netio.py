"""Save / load a trained parameter network with its protocol (torch.save; loaded with weights_only=True).

The file is a dict of plain data: ``state`` (state_dict), ``bvals`` (s/mm^2), ``scales`` (per parameter),
``model`` (signal convention), ``width``, ``n_hidden``, ``names``, ``info`` (label, training record), and since the
bounded output: ``output`` (``sigmoid`` or ``abs``, see :class:`~mrlearn.qmri.networks.IvimMLP`), ``output_bounds``
(``[lower, upper]`` per parameter in physical units, S0 in multiples of the lowest-b signal) and ``ranges`` (the
training ranges ``{name: [low, high]}``). Files written before these keys load as ``output: abs`` with
``output_bounds`` and ``ranges`` None (see :mod:`mrlearn.qmri.netpredict` for how they are applied). The network
expects signals in the order of ``bvals`` normalised by their mean at the lowest b-value (S0 then comes out in
multiples of that signal); :func:`check_protocol` refuses a protocol other than the network's.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mrlearn.errors import input_error
from mrlearn.qmri.networks import IvimMLP
from mrlearn.io import atomic_write_bytes


def save_network(path: str | Path, net: IvimMLP, bvals: torch.Tensor, scales: torch.Tensor, model: str,
                 width: int, n_hidden: int, names: Sequence[str], info: dict[str, Any] | None = None,
                 output_bounds: tuple[Sequence[float], Sequence[float]] | None = None,
                 ranges: Mapping[str, Sequence[float]] | None = None) -> Path:
    """Write the network file atomically (``info``: plain JSON-like data, e.g. label and training record).

    ``output_bounds`` (physical units) defaults, for a ``sigmoid`` network, to its scaled bounds times ``scales``."""
    if output_bounds is None and net.output == "sigmoid":
        s = torch.as_tensor(scales, dtype=torch.float64).cpu()
        output_bounds = ((net.lower.double().cpu() * s).tolist(), (net.upper.double().cpu() * s).tolist())
    buf = io.BytesIO()
    torch.save({"state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "bvals": [float(b) for b in bvals], "scales": [float(s) for s in scales], "model": model,
                "width": int(width), "n_hidden": int(n_hidden), "names": list(names), "info": dict(info or {}),
                "output": net.output,
                "output_bounds": None if output_bounds is None else [[float(v) for v in output_bounds[0]],
                                                                     [float(v) for v in output_bounds[1]]],
                "ranges": None if ranges is None else {k: [float(v[0]), float(v[1])] for k, v in ranges.items()}}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_network(path: str | Path) -> tuple[IvimMLP, dict[str, Any]]:
    """Read a network file (weights_only=True); returns (net in eval mode, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "network file not found", "give a .pt file written by 'mrlearn qmri train' or a study (models/)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = {k: blob[k] for k in ("bvals", "scales", "model", "width", "n_hidden", "names")}
        meta["info"] = blob.get("info", {})
        meta["output"] = blob.get("output", "abs")
        meta["output_bounds"] = blob.get("output_bounds")
        meta["ranges"] = blob.get("ranges")
        state = blob["state"]
        bounds = (state["lower"], state["upper"]) if meta["output"] == "sigmoid" else None
        net = IvimMLP(len(meta["bvals"]), len(meta["scales"]), meta["width"], meta["n_hidden"], bounds=bounds)
        net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise input_error(path, f"not a qmri network file ({exc.__class__.__name__})",
                          "give a .pt file written by 'mrlearn qmri train' or 'mrlearn qmri study'") from exc
    net.eval()
    return net, meta


def check_protocol(meta: dict[str, Any], bvals: torch.Tensor, where: str) -> None:
    """Refuse b-values other than the network's (same count, same values within 1e-3 s/mm^2, same order)."""
    theirs = torch.tensor(meta["bvals"], dtype=torch.float64)
    if theirs.numel() != bvals.numel() or not torch.allclose(theirs, bvals.double().cpu(), atol=1e-3, rtol=0):
        raise input_error(where, f"b-values {[round(float(b), 3) for b in bvals]} differ from the network's protocol "
                          f"{[round(float(b), 3) for b in theirs]}",
                          "train a network for this protocol: mrlearn qmri train --bvals <this file> --out DIR")
