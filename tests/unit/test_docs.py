"""The repository's documents point at things that exist.

A newcomer follows links and paths from the README, CONTRIBUTING.md, CHANGELOG.md and docs/: every
relative Markdown link must resolve, and every file path written in backticks must exist (paths
with placeholders such as ``<service>`` or globs are not checked).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP_DOCUMENTS = ("README.md", "CONTRIBUTING.md", "CHANGELOG.md", "ops/README.md")
DOCUMENTS = sorted([*(ROOT / name for name in TOP_DOCUMENTS), *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")
# `dir/…/name.ext` in backticks, rooted at a top-level folder of the repository.
FOLDERS = "contracts commands eventstore projections services tests bench ops docs requirements"
TOP = "|".join(FOLDERS.split())
PATH = re.compile(rf"`((?:{TOP})/[\w./-]+\.(?:py|md|json|yaml|toml|txt|sql|proto))`")


def ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("document", DOCUMENTS, ids=ids)
def test_relative_links_resolve(document: Path) -> None:
    text = document.read_text()
    broken = [
        target
        for target in LINK.findall(text)
        if "://" not in target and not (document.parent / target).exists()
    ]
    assert not broken, f"{ids(document)} links to missing {broken}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=ids)
def test_file_paths_exist(document: Path) -> None:
    missing = [path for path in PATH.findall(document.read_text()) if not (ROOT / path).exists()]
    assert not missing, f"{ids(document)} names missing files {missing}"


def test_the_license_is_the_one_pyproject_declares() -> None:
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
