"""The ``mrlearn`` command line.

Each sub-command lives in ``mrlearn.commands.<name>`` and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code.
User errors (:class:`mrlearn.errors.MrlearnError`) are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mrlearn import __version__
from mrlearn.errors import MrlearnError

# Order is the order shown in ``mrlearn --help``.
COMMANDS = ("demo", "simulate", "convert", "train", "reconstruct", "evaluate", "study", "qmri")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only`` set, just that sub-command is imported (fast start-up)."""
    parser = argparse.ArgumentParser(prog="mrlearn", description="Deep learning for MRI reconstruction and quantitative MRI.")
    parser.add_argument("--version", action="version", version=f"mrlearn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (only,) if only in COMMANDS else COMMANDS:
        importlib.import_module(f"mrlearn.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except MrlearnError as exc:
        print(f"mrlearn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mrlearn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
