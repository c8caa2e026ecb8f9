"""The docs site builds with `mkdocs build --strict`: a broken link or anchor fails the test suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from doc_snippets import DOCS, pages

REPO = DOCS.parent


def build(config_file: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config_file), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = build(REPO / "mkdocs.yml", site)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    for page in pages():
        built = site / page.relative_to(DOCS).with_suffix("") / "index.html"
        if page.name == "index.md":
            built = site / "index.html"
        assert built.exists(), f"{page.name} was not rendered"
    assert not (site / "_tools").exists(), "the generator's files must not be published"


def test_every_page_is_in_the_navigation() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))

    def files(node: object) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, dict):
            return [f for value in node.values() for f in files(value)]
        if isinstance(node, list):
            return [f for item in node for f in files(item)]
        return []

    in_nav = set(files(config["nav"]))
    on_disk = {page.relative_to(DOCS).as_posix() for page in pages()}
    assert in_nav == on_disk


def test_a_broken_anchor_fails_the_build(tmp_path: Path) -> None:
    """The strict build really checks anchors (mkdocs only reports them at INFO level by default)."""
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    index = tmp_path / "docs" / "index.md"
    index.write_text(
        index.read_text(encoding="utf-8") + "\n[gone](auth.md#no-such-section)\n", encoding="utf-8"
    )
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-section" in result.stderr + result.stdout
