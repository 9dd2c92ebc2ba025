"""The how-to pages' commands stay valid: every ``mrlearn ...`` line of their bash blocks parses with the CLI's own
parser (options, choices, sub-commands), so a renamed option shows up here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mrlearn.cli import build_parser

PAGES = ("reconstruct-your-data.md", "train-on-fastmri.md", "submission.md")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "howto"


def commands(page: Path) -> list[list[str]]:
    """``mrlearn`` command lines (continuations joined, comments dropped) of the page's bash blocks."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["mrlearn"]:
                out.append(words[1:])
    return out


@pytest.mark.parametrize("page", PAGES)
def test_every_command_of_the_page_parses(page):
    found = commands(DOCS / page)
    assert found, f"{page} shows no mrlearn command"
    for argv in found:
        args = build_parser(only=argv[0]).parse_args(argv)  # SystemExit (exit 2) on an unknown option or choice
        assert args.func is not None, argv
