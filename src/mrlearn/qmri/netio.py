"""Save / load a trained parameter network with its protocol (torch.save; loaded with weights_only=True).

The file is a dict of plain data: ``state`` (state_dict), ``bvals`` (s/mm^2), ``scales`` (per parameter),
``model`` (signal convention), ``width``, ``n_hidden``, ``names`` and ``info`` (label, training record). The
network expects signals in the order of ``bvals`` normalised by their mean at the lowest b-value (S0 then comes
out in multiples of that signal); :func:`check_protocol` refuses a protocol other than the network's.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import torch

from mrlearn.errors import input_error
from mrlearn.qmri.networks import IvimMLP
from mrlearn.io import atomic_write_bytes


def save_network(path: str | Path, net: IvimMLP, bvals: torch.Tensor, scales: torch.Tensor, model: str,
                 width: int, n_hidden: int, names: Sequence[str], info: dict[str, Any] | None = None) -> Path:
    """Write the network file atomically (``info``: plain JSON-like data, e.g. label and training record)."""
    buf = io.BytesIO()
    torch.save({"state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "bvals": [float(b) for b in bvals], "scales": [float(s) for s in scales], "model": model,
                "width": int(width), "n_hidden": int(n_hidden), "names": list(names), "info": dict(info or {})}, buf)
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
        net = IvimMLP(len(meta["bvals"]), len(meta["scales"]), meta["width"], meta["n_hidden"])
        net.load_state_dict(blob["state"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise input_error(path, f"not a qmri network file ({exc.__class__.__name__})",
                          "give a .pt file written by 'mrlearn qmri study'") from exc
    net.eval()
    return net, meta


def check_protocol(meta: dict[str, Any], bvals: torch.Tensor, where: str) -> None:
    """Refuse b-values other than the network's (same count, same values within 1e-3 s/mm^2, same order)."""
    theirs = torch.tensor(meta["bvals"], dtype=torch.float64)
    if theirs.numel() != bvals.numel() or not torch.allclose(theirs, bvals.double().cpu(), atol=1e-3, rtol=0):
        raise input_error(where, f"b-values {[round(float(b), 3) for b in bvals]} differ from the network's protocol "
                          f"{[round(float(b), 3) for b in theirs]}",
                          "train a network for this protocol: mrlearn qmri train --bvals <this file> --out DIR")
