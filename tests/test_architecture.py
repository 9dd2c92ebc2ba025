"""The layering of docs/architecture.md holds: lower layers never import higher ones (imports inside functions too),
the maths never imports Lightning, and no source file grows past the size of one job."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mrlearn"
CAPABILITIES = ("mrlearn.mtl", "mrlearn.ssl", "mrlearn.layerwise", "mrlearn.qmri")
ABOVE_CORE = ("lightning", "mrlearn.engine", "mrlearn.training", "mrlearn.study", "mrlearn.commands", "mrlearn.api",
              "mrlearn.cli", *CAPABILITIES)
#: package (or module) -> prefixes it must never import
FORBIDDEN = {
    "mrlearn.errors": ("mrlearn",),
    "mrlearn.io": ABOVE_CORE + ("mrlearn.physics", "mrlearn.data", "mrlearn.recon", "mrlearn.models"),
    "mrlearn.yamlfile": ABOVE_CORE + ("mrlearn.physics", "mrlearn.data"),
    "mrlearn.registry": ABOVE_CORE,
    "mrlearn.config": ABOVE_CORE,
    "mrlearn.progress": ABOVE_CORE + ("mrlearn.physics", "mrlearn.data", "mrlearn.recon", "mrlearn.models",
                                      "mrlearn.evaluation"),
    "mrlearn.physics": ABOVE_CORE + ("mrlearn.data", "mrlearn.recon", "mrlearn.models", "mrlearn.evaluation"),
    "mrlearn.data": ABOVE_CORE + ("mrlearn.recon", "mrlearn.models", "mrlearn.evaluation"),
    "mrlearn.recon": ABOVE_CORE + ("mrlearn.models", "mrlearn.evaluation"),
    "mrlearn.evaluation": ABOVE_CORE + ("mrlearn.models",),
    "mrlearn.models": ABOVE_CORE + ("mrlearn.evaluation",),
    "mrlearn.engine": ("mrlearn.study", "mrlearn.commands", "mrlearn.api", "mrlearn.cli", *CAPABILITIES),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


SOURCES = sorted(SRC.rglob("*.py"))


def _layer(module: str) -> str | None:
    for layer in sorted(FORBIDDEN, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_lower_layers_never_import_higher_ones(path: Path) -> None:
    module = _module_name(path)
    layer = _layer(module)
    if layer is None:
        return
    bad = sorted(name for name in _imports(path) for prefix in FORBIDDEN[layer]
                 if name == prefix or name.startswith(prefix + "."))
    assert not bad, f"{module} ({layer}) imports {bad}"


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    import lightning.pytorch\n    from mrlearn.training.runner import train\n")
    assert {"lightning.pytorch", "mrlearn.training.runner"} <= _imports(fake)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_source_files_stay_small(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= 420, f"{path.relative_to(SRC)} has {lines} lines: split it by job"
