"""YAML for configs and studies: safe loading (no Python objects) with YAML 1.2 floats, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mrlearn.errors import input_error
from mrlearn.io import read_text


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names one key twice (PyYAML would keep the last value without a word)."""


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 floats: ``1e-4`` and ``3e-4`` are numbers (PyYAML's 1.1 resolver wants a
    dot, ``1.0e-4``, and reads ``1e-4`` as the string ``'1e-4'``); a key given twice in one mapping is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise DuplicateKeyError(None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key) if isinstance(key, (str, int, float, bool)) else None
        return super().construct_mapping(node, deep=deep)


YamlLoader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse YAML text safely (no Python objects) with YAML 1.2 floats (:class:`YamlLoader`)."""
    loader = YamlLoader(text)  # a SafeLoader: plain data only, never Python objects
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path) -> Any:
    """The YAML document in ``path``; unreadable, non-UTF-8 or malformed files are one-line errors."""
    p = Path(path)
    text = read_text(p, "file")
    try:
        return yaml_load(text)
    except DuplicateKeyError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        raise input_error(p, f"{exc.problem}{at}: the last value would win silently", "give each key once") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        raise input_error(p, f"not valid YAML{at}", "fix the syntax") from None
