"""The documentation site builds without a warning (mkdocs --strict: no broken link, no page missing from the
nav, docstrings parse), and the study file shown in the how-to is a valid study with runnable configs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "load_model" in api and "plugin_modules" in api  # generated from the docstrings


def test_every_docs_page_is_in_the_nav():
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from pages(v)
        elif isinstance(node, list):
            for v in node:
                yield from pages(v)

    listed = set(pages(nav))
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md") if "results" not in p.parts}
    assert on_disk - listed == set(), "pages missing from mkdocs.yml nav"


def test_howto_study_file_is_valid(tmp_path):
    from mrlearn.study.spec import study_from_dict
    from mrlearn.yamlfile import yaml_load

    text = (ROOT / "docs" / "howto" / "run-a-study.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    spec = study_from_dict(yaml_load(block), "run-a-study.md")
    runs = spec.runs()
    assert spec.name == "my_study" and len(runs) == 6
    from mrlearn.study.spec import run_config

    for run in runs:  # every arm's overrides make a valid experiment config
        cfg = run_config(spec, run, tmp_path / run.run_id)
        assert cfg.method["loss"]["name"] in ("l1", "ssim")


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to missing {target}"
