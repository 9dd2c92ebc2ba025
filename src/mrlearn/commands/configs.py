"""``mrlearn configs``: the shipped configs, each with its kind and the one-line description at the top of its YAML.

The first comment line of every file in ``mrlearn/configs/`` is its description. A file with study keys
(``base``, ``arms``, ``grid``, ``seeds``, ``runner``) is a study (``mrlearn study NAME``); any other is an
experiment (``mrlearn train --config NAME``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
STUDY_MARKERS = ("base", "arms", "grid", "seeds", "runner")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("configs", help="list the shipped configs with a one-line description",
                              description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("--kind", choices=("experiment", "study"), help="list only this kind")
    p.set_defaults(func=run)


def describe(path: Path) -> tuple[str, str]:
    """``(kind, description)`` of one config file: ``experiment`` or ``study``, and its first comment line."""
    import yaml

    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0] if text else ""
    description = first.lstrip("#").strip() if first.startswith("#") else "(no description)"
    raw = yaml.safe_load(text) or {}
    kind = "study" if isinstance(raw, dict) and any(k in raw for k in STUDY_MARKERS) else "experiment"
    return kind, description


def shipped() -> list[tuple[str, str, str]]:
    """``(name, kind, description)`` of every shipped config, by name."""
    return [(p.stem, *describe(p)) for p in sorted(CONFIG_DIR.glob("*.yaml"))]


def run(args: argparse.Namespace) -> int:
    rows = [r for r in shipped() if args.kind in (None, r[1])]
    width = max(len(name) for name, _, _ in rows)
    for kind, command in (("experiment", "mrlearn train --config NAME"), ("study", "mrlearn study NAME")):
        chosen = [r for r in rows if r[1] == kind]
        if not chosen:
            continue
        print(f"{kind.capitalize()} configs ({command}; copy one with its comments from {CONFIG_DIR}):")
        for name, _, description in chosen:
            print(f"  {name:<{width}}  {description}")
    return 0
