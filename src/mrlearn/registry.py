"""Build models, losses, masks, optimizers, schedulers, methods and classical reconstructions by name.

Every entry is a class or factory function registered under ``(kind, name)``::

    @register("model", "unet")
    class Unet(nn.Module):
        def __init__(self, in_chans: int = 1, out_chans: int = 1, chans: int = 32, num_pool_layers: int = 4): ...

A config section is a dict with ``name`` plus keyword arguments, e.g. ``{"name": "unet", "chans": 16}``.
:func:`build` checks each key against the factory's signature and type hints, so a typo or a wrong type is a
one-line :class:`~mrlearn.errors.MrlearnError` naming ``<where>.<key>`` and listing the valid keys.
Run-time arguments that do not come from the config (model parameters for an optimizer, the model for a
method) are passed as ``**runtime`` and are neither validated nor listed.

Kinds and the call each entry must support:
  ``model``      ``(**cfg) -> nn.Module``;  ``loss`` ``() -> nn.Module`` called ``loss(output, target, data_range)``;
  ``mask``       ``(**cfg) -> MaskFunc`` (``physics.masks``);  ``optimizer`` ``(params, **cfg)``;
  ``scheduler``  ``(optimizer, **cfg)`` (stepped per epoch);
  ``method``     ``(model, loss, cfg, **cfg.method) -> training.module.ReconModule`` (a LightningModule);
  ``recon``      ``(**options) -> fn`` with ``fn(sample) -> [h, w]`` magnitude, ``sample`` a dict of one slice's
                 ``kspace`` (masked ``[C, H, W]`` complex64), ``mask``, ``sens_maps`` or None, ``recon_size``,
                 ``fname``, ``slice`` (see ``training.inference``);
  ``weighting``  ``(num_tasks, **cfg) -> mtl.weighting.Weighting`` (multi-task loss weighting / gradient combination).

Entries are registered by importing their module. Which modules provide a kind is declared as package entry
points, one group per kind (``mrlearn.model``, ``mrlearn.recon``, ``mrlearn.method``, ..., ``mrlearn.section``,
``mrlearn.runner``), e.g. in ``pyproject.toml``::

    [project.entry-points."mrlearn.model"]
    unet = "mrlearn.models.unet"

Core lists no capability: a capability (in mrlearn or in another installed package) declares its modules there.
They are imported lazily, in declaration order, only as far as needed to find a name (fast start-up).

Code of one's own without a package: the environment variable ``MRLEARN_PLUGINS`` (comma-separated module names,
importable from ``sys.path``) lists modules imported before the first lookup, which register entries with
:func:`register`. The user who runs mrlearn sets it; a config or study file never names a module.
"""

from __future__ import annotations

import functools
import importlib
import os
import inspect
import typing
from typing import Any, Callable

from mrlearn.errors import MrlearnError, input_error

#: the kinds of entries; each has the entry-point group ``mrlearn.<kind>``
KINDS = ("model", "loss", "mask", "optimizer", "scheduler", "method", "recon", "weighting", "section", "runner")

_ENTRIES: dict[str, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}
_LOADED: set[str] = set()


@functools.lru_cache(maxsize=None)
def _entry_points(kind: str) -> tuple[tuple[str, str], ...]:
    from importlib.metadata import entry_points

    return tuple((ep.name, ep.value.split(":")[0]) for ep in entry_points(group=f"mrlearn.{kind}"))


def providers(kind: str, name: str | None = None) -> tuple[str, ...]:
    """Modules declared (entry-point group ``mrlearn.<kind>``) to register entries of ``kind``; with ``name``,
    the module(s) of an entry point of that name come first (an entry point named like the entry it provides)."""
    eps = _entry_points(kind)
    first = [module for ep_name, module in eps if ep_name == name]
    return tuple(dict.fromkeys([*first, *(module for _, module in eps)]))


def register(kind: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a class or factory as ``(kind, name)``; re-registering the same object is a no-op."""
    if kind not in _ENTRIES:
        raise ValueError(f"unknown registry kind {kind!r}; kinds: {', '.join(KINDS)}")

    def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
        old = _ENTRIES[kind].get(name)
        if old is not None and getattr(old, "__qualname__", old) != getattr(obj, "__qualname__", obj):
            raise ValueError(f"registry: {kind} {name!r} registered twice ({old!r} and {obj!r})")
        _ENTRIES[kind][name] = obj
        return obj

    return deco


def _load_plugins() -> None:
    """Import the modules of ``MRLEARN_PLUGINS`` once (one-line error for one that cannot be imported)."""
    if "plugins" in _LOADED:
        return
    _LOADED.add("plugins")
    for module in filter(None, (m.strip() for m in os.environ.get("MRLEARN_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise input_error("MRLEARN_PLUGINS", f"cannot import {module!r} ({exc})",
                              "put the module on PYTHONPATH or fix the variable") from None


def _load(kind: str, name: str | None = None) -> None:
    """Import the providers of ``kind``; with ``name``, stop as soon as that entry is registered (fast start-up)."""
    _load_plugins()
    if kind in _LOADED:
        return
    for module in providers(kind, name):
        if name is not None and name in _ENTRIES[kind]:
            return
        importlib.import_module(module)
    _LOADED.add(kind)


def plugin_modules() -> list[str]:
    """Modules outside mrlearn whose entries are registered in this process (checkpoints store them so that a
    later process can say which plugin it lacks); ``__main__`` stands for entries registered by a script."""
    modules = {getattr(obj, "__module__", "") or "" for entries in _ENTRIES.values() for obj in entries.values()}
    return sorted(m for m in modules if m and m != "mrlearn" and not m.startswith("mrlearn."))


def missing_plugins(modules: typing.Iterable[str]) -> list[str]:
    """Of ``modules`` (as stored by :func:`plugin_modules`), those neither imported now, nor listed in
    ``MRLEARN_PLUGINS``, nor declared by an installed package's entry points."""
    _load_plugins()
    import sys

    declared = {module for kind in KINDS for _, module in _entry_points(kind)}
    return [m for m in modules if m == "__main__" or (m not in sys.modules and m not in declared)]


def plugin_advice(modules: list[str]) -> str:
    """What to do when entries of the plugin ``modules`` cannot be found (one clause of a one-line error)."""
    names = [m for m in modules if m != "__main__"]
    parts = []
    if "__main__" in modules:
        parts.append("entries registered in a script are lost when it ends: move them into a module")
    if names:
        parts.append(f"set MRLEARN_PLUGINS={','.join(names)} (importable from PYTHONPATH) or install the package "
                     "that provides them (entry points, see docs/howto/own-model.md)")
    return "; ".join(parts)


def available(kind: str) -> list[str]:
    """Sorted names registered under ``kind``."""
    if kind not in _ENTRIES:
        raise ValueError(f"unknown registry kind {kind!r}")
    _load(kind)
    return sorted(_ENTRIES[kind])


def find(kind: str, name: str) -> Callable[..., Any] | None:
    """The entry ``(kind, name)`` or None when no provider registers it."""
    if kind not in _ENTRIES:
        raise ValueError(f"unknown registry kind {kind!r}")
    _load(kind, name)
    return _ENTRIES[kind].get(name)


def name_of(kind: str, obj: Any) -> str | None:
    """The name ``obj`` is registered under as ``kind`` in this process (None: not registered)."""
    return next((name for name, entry in _ENTRIES.get(kind, {}).items() if entry is obj), None)


def lookup(kind: str, name: str, where: str = "") -> Callable[..., Any]:
    """The factory registered as ``(kind, name)``; unknown names raise a one-line error listing the choices."""
    if kind not in _ENTRIES:
        raise ValueError(f"unknown registry kind {kind!r}")
    _load(kind, name)
    if name not in _ENTRIES[kind]:
        names = available(kind)
        raise input_error(where or kind, f"unknown {kind} {name!r}", f"choose one of: {', '.join(names) or '(none)'}")
    return _ENTRIES[kind][name]


def config_params(factory: Callable[..., Any], runtime: typing.Iterable[str] = ()) -> dict[str, inspect.Parameter]:
    """Keyword parameters of ``factory`` that a config may set (excludes ``self``, ``*args``, ``**kw`` and runtime)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = {}
    for pname, p in inspect.signature(target).parameters.items():
        if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or pname in runtime:
            continue
        params[pname] = p
    return params


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except (NameError, TypeError):  # unresolvable annotations: fall back to no type checks
        return {}


def section_name(section: Any, where: str) -> str:
    """The ``name`` of a section given as a dict or as a bare string."""
    if isinstance(section, str):
        return section
    if not isinstance(section, dict) or not isinstance(section.get("name"), str):
        raise input_error(where, "needs a 'name' (a string)", "write e.g. 'name: unet'")
    return section["name"]


def validate(kind: str, section: Any, where: str, runtime: typing.Iterable[str] = ()) -> dict[str, Any]:
    """Check a section against its factory; returns the keyword arguments (without ``name``)."""
    from mrlearn.config import check_type  # local: config imports this module

    name = section_name(section, where)
    factory = lookup(kind, name, f"{where}.name")
    kwargs = {} if isinstance(section, str) else {k: v for k, v in section.items() if k != "name"}
    params = config_params(factory, runtime)
    hints = _hints(factory)
    for key, value in kwargs.items():
        if key not in params:
            valid = ", ".join(sorted(params)) or "(none)"
            raise input_error(f"{where}.{key}", f"unknown option for {kind} {name!r}", f"valid keys: {valid}")
        if key in hints:
            check_type(value, hints[key], f"{where}.{key}")
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise input_error(where, f"{kind} {name!r} needs {', '.join(missing)}", "add them to the section")
    return kwargs


def build(kind: str, section: Any, where: str, **runtime: Any) -> Any:
    """Validate ``section`` and call its factory with the section's keywords plus ``runtime`` arguments."""
    kwargs = validate(kind, section, where, runtime=runtime.keys())
    factory = lookup(kind, section_name(section, where), f"{where}.name")
    try:
        return factory(**kwargs, **runtime)
    except MrlearnError:
        raise
    except (TypeError, ValueError) as exc:
        raise input_error(where, f"cannot build {kind} {section_name(section, where)!r}: {exc}",
                          "check the section's values") from exc
