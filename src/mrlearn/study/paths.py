"""Relative paths in a run's config, made absolute where the study starts (the driver).

A worker process or a Ray task on another node runs in another working directory, so every path in a run's config
that names a file or folder is resolved against the directory ``mrlearn study`` was started in before the run is
shipped: ``data.root``, ``model.init`` and each ``tasks.tasks[i].root``. ``~`` is expanded. ``data.train`` /
``data.val`` / ``data.test`` are folder names inside ``data.root`` (an absolute one stays as it is), so they follow
the root. Absolute paths, null and non-string values are left alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: dotted keys of path values; ``*`` stands for every item of a list
PATH_KEYS = ("data.root", "model.init", "tasks.tasks.*.root")


def _absolute(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or not value:
        return value
    path = Path(os.path.expanduser(value))
    return str(path if path.is_absolute() else (base / path).absolute())


def _apply(node: Any, parts: list[str], base: Path) -> None:
    if not parts:
        return
    head, rest = parts[0], parts[1:]
    if head == "*":
        for i, item in enumerate(node if isinstance(node, list) else []):
            if rest:
                _apply(item, rest, base)
            else:
                node[i] = _absolute(item, base)
        return
    if not isinstance(node, dict) or head not in node:
        return
    if rest:
        _apply(node[head], rest, base)
    else:
        node[head] = _absolute(node[head], base)


def absolute_paths(raw: dict[str, Any], base: str | Path | None = None) -> dict[str, Any]:
    """``raw`` (a config as plain data, changed in place and returned) with every :data:`PATH_KEYS` value made
    absolute against ``base`` (default: the current working directory)."""
    root = Path(base) if base is not None else Path.cwd()
    for key in PATH_KEYS:
        _apply(raw, key.split("."), root)
    return raw


def absolute_config_text(text: str, base: str | Path | None = None) -> str:
    """A resolved config (YAML text, e.g. an older run's ``config.yaml``) with its paths made absolute, so a run
    recorded with a relative ``data.root`` compares equal to the same run asked for now."""
    import yaml

    raw = yaml.safe_load(text)
    return yaml.safe_dump(absolute_paths(raw, base), sort_keys=False) if isinstance(raw, dict) else text
