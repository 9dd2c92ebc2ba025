"""``model.init``: start any model from weights saved in a file (e.g. fastMRI's published state dicts).

:func:`load_init_weights` reads the file with ``torch.load(path, map_location="cpu", weights_only=True)``. Accepted:
a bare state dict (``torch.save(model.state_dict(), path)``), or a dict with a ``"state_dict"`` (a Lightning
checkpoint: mrlearn's keeps the network under a leading ``model.``; another single leading prefix, e.g. fastMRI's
``varnet.`` / ``unet.`` or DDP's ``module.``, is found by matching the model's own names). Names of mrlearn's
earlier U-Net naming are upgraded (:func:`mrlearn.models.unet.upgrade_legacy_keys`). Any missing, unexpected or
differently shaped weight is a one-line :class:`~mrlearn.errors.MrlearnError` naming the file, the first such key
and, where the file holds a U-Net or a VarNet, the settings to use (``set model.chans=32``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from mrlearn.errors import input_error
from mrlearn.models.unet import upgrade_legacy_keys

WHERE = "model.init"
SAVE_HINT = "save the weights with torch.save(model.state_dict(), path)"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {lines[0][:120]}" if lines else exc.__class__.__name__


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The state dict stored in ``path`` (bare, or a checkpoint's ``"state_dict"``, keys as stored)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise input_error(f"{WHERE} {p}", "file not found", f"give the path of a saved state dict ({SAVE_HINT}) "
                          "or set model.init: null")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise input_error(f"{WHERE} {p}", f"cannot read the file ({exc.strerror or exc})", "check its permissions") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means the file is not a torch weights file
        raise input_error(f"{WHERE} {p}", f"not a torch weights file ({_first_line(exc)})", SAVE_HINT) from None
    if isinstance(blob, Mapping) and isinstance(blob.get("state_dict"), Mapping):
        blob = blob["state_dict"]
    if not isinstance(blob, Mapping) or not blob or not any(torch.is_tensor(v) for v in blob.values()):
        what = f"a {type(blob).__name__}" if not isinstance(blob, Mapping) else "no tensors"
        raise input_error(f"{WHERE} {p}", f"holds {what}, not a state dict", SAVE_HINT)
    return {str(k): v for k, v in blob.items()}


def match_prefix(state_dict: Mapping[str, Any], own_keys: set[str]) -> dict[str, Any]:
    """``state_dict`` as is, or stripped of the one leading prefix (``model.``, ``varnet.``, ...) whose removal
    matches most of ``own_keys`` (legacy U-Net names upgraded either way)."""
    best = upgrade_legacy_keys(state_dict, own_keys)
    best_score = sum(k in own_keys for k in best)
    for prefix in dict.fromkeys(k.split(".", 1)[0] + "." for k in state_dict if "." in k):
        stripped = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        stripped = upgrade_legacy_keys(stripped, own_keys)
        score = sum(k in own_keys for k in stripped)
        if score > best_score:
            best, best_score = stripped, score
    return best


def _families() -> list[tuple[str, str, Callable[[Mapping[str, Any]], dict[str, int] | None]]]:
    from mrlearn.models.unet import Unet
    from mrlearn.models.varnet import VarNet

    return [("varnet", "VarNet", VarNet.config_from_state_dict), ("unet", "U-Net", Unet.config_from_state_dict)]


def _advice(state_dict: Mapping[str, Any], model: nn.Module, name: str | None) -> str:
    """What to set so that the model fits the file (settings read from the file where it holds a known network)."""
    for family, label, settings_of in _families():
        held = settings_of(state_dict)
        if held is None:
            continue
        described = ", ".join(f"{k} {v}" for k, v in held.items())
        if name is not None and name != family:
            sets = " ".join(f"model.{k}={v}" for k, v in held.items())
            return f"the file holds a {label} ({described}); set model.name={family} {sets}"
        own = settings_of(model.state_dict()) or {}
        diff = {k: v for k, v in held.items() if own.get(k) != v}
        if diff:
            return f"the file holds a {label} with {described}; set " + " ".join(f"model.{k}={v}" for k, v in diff.items())
        break
    return "build the model with the name and settings the file was saved from"


def fit_state_dict(model: nn.Module, state_dict: Mapping[str, Any], where: str, name: str | None = None) -> dict[str, Any]:
    """``state_dict`` with its prefix matched to ``model`` (:func:`match_prefix`), checked key by key and shape by
    shape; a mismatch is a one-line error at ``where`` with advice (:func:`_advice`)."""
    own = model.state_dict()
    sd = match_prefix(state_dict, set(own))
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} is {tuple(sd[k].shape)} in the file, {tuple(v.shape)} in the model" for k, v in own.items()
              if k in sd and torch.is_tensor(v) and tuple(getattr(sd[k], "shape", ())) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return sd
    parts = []
    if shapes:
        parts.append(f"shape mismatch: {shapes[0]}" + (f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else ""))
    if missing:
        parts.append(f"missing {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        parts.append(f"unexpected {unexpected[0]}" + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    model_name = f"model {name!r}" if name else "the model"
    raise input_error(where, f"does not fit {model_name}: {'; '.join(parts)}", _advice(sd, model, name))


def load_init_weights(model: nn.Module, path: str | Path, name: str | None = None) -> nn.Module:
    """Load the weights of ``path`` into ``model`` (strictly, after :func:`fit_state_dict`); returns ``model``.

    ``name``: the model's registry name (``cfg.model.name``), for the advice of a mismatch.
    """
    p = Path(path).expanduser()
    sd = fit_state_dict(model, read_state_dict(p), f"{WHERE} {p}", name)
    model.load_state_dict(sd, strict=True)
    return model
