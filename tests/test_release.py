"""Project hygiene: one version in pyproject, the package and the changelog; every release tag has its changelog
entry; the licence file is the one pyproject names."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M).group(1)


def _changelog_versions() -> list[str]:
    return re.findall(r"^## (\d+\.\d+\.\d+)\b", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)


def test_one_version_everywhere():
    import mrlearn

    assert mrlearn.__version__ == _pyproject_version() == _changelog_versions()[0]


def test_changelog_versions_descend():
    versions = [tuple(map(int, v.split("."))) for v in _changelog_versions()]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)


def test_every_release_tag_has_a_changelog_entry():
    try:
        tags = subprocess.run(["git", "tag", "--list", "v*"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("git not available")
    if tags.returncode != 0:
        pytest.skip("not a git checkout")
    listed = set(_changelog_versions())
    for tag in tags.stdout.split():
        assert tag[1:] in listed, f"tag {tag} has no CHANGELOG entry"


def test_licence_is_the_one_pyproject_names():
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
