"""The repository's documents point at things that exist.

A newcomer follows links and paths from the README, CONTRIBUTING.md, CHANGELOG.md and docs/: every
relative Markdown link must resolve, and every file path written in backticks must exist (paths
with placeholders such as ``<service>`` or globs are not checked).

Comments everywhere else (code, protos, SQL, kustomize, nats.conf) point into the same documents:
every ``docs/….md`` they name exists, every "invariant N", "§N" and "convention N" they cite is
numbered there, and none points at a brief that is not part of the repository.
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


# Where comments live: every text file of the repository except generated code and environments.
SOURCE_SUFFIXES = {
    ".py",
    ".proto",
    ".sql",
    ".yaml",
    ".yml",
    ".conf",
    ".toml",
    ".md",
    ".cfg",
    ".txt",
}
SKIPPED_PARTS = {".venv", ".git", "__pycache__", "gen", "node_modules", ".mypy_cache"}
SOURCES = sorted(
    path
    for path in [*ROOT.glob("*"), *(p for f in FOLDERS.split() for p in (ROOT / f).rglob("*"))]
    if path.is_file()
    and (path.suffix in SOURCE_SUFFIXES or path.name in {"Makefile", "Dockerfile"})
    and not SKIPPED_PARTS.intersection(path.relative_to(ROOT).parts)
    and not path.relative_to(ROOT).parts[0].startswith("requirements")
)
# Built from pieces so that this file does not match itself.
BRIEF = re.compile("DESIGN ?" + "\u00a7|DESIGN" + r"\.md|STYLE" + r"\.md|STYLE " + "\u00a7", re.I)
DOC_PATH = re.compile(r"\bdocs/[\w-]+\.md\b")
ARCHITECTURE_CITE = re.compile(
    r"docs/architecture\.md,?\s+(?:(?P<inv>invariants?)\s+(?P<nums>\d+(?:\s*(?:,|and)\s*\d+)*)"
    r"|§(?P<section>\d+(?:\.\d+)?))"
)
CONVENTION_CITE = re.compile(r"CONTRIBUTING\.md,?\s+conventions?\s+(?P<nums>\d+)")


def numbered_items(document: str, heading: str) -> set[int]:
    """The numbers of the ``N. **…**`` list under ``heading`` in ``document``."""
    text = (ROOT / document).read_text().split(heading, 1)[1]
    text = re.split(r"\n## ", text, maxsplit=1)[0]
    return {int(n) for n in re.findall(r"^(\d+)\. \*\*", text, re.M)}


def architecture_sections() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, re.M))


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


def test_no_reference_to_documents_outside_the_repository() -> None:
    found = [
        f"{ids(source)}:{number}: {line.strip()}"
        for source in SOURCES
        for number, line in enumerate(source.read_text(errors="replace").splitlines(), 1)
        if BRIEF.search(line)
    ]
    assert not found, f"cites a document the repository does not hold: {found}"


def test_documents_named_in_comments_exist() -> None:
    missing = sorted(
        f"{ids(source)}: {path}"
        for source in SOURCES
        for path in set(DOC_PATH.findall(source.read_text(errors="replace")))
        if not (ROOT / path).exists()
    )
    assert not missing, f"names missing documents: {missing}"


def test_cited_invariants_sections_and_conventions_exist() -> None:
    invariants = numbered_items("docs/architecture.md", "## 2. Invariants")
    sections = architecture_sections()
    conventions = numbered_items("CONTRIBUTING.md", "## Code conventions")
    wrong: list[str] = []
    for source in SOURCES:
        text = " ".join(source.read_text(errors="replace").split())  # citations may wrap lines
        for match in ARCHITECTURE_CITE.finditer(text):
            if match["section"] is not None:
                if match["section"] not in sections:
                    wrong.append(f"{ids(source)}: {match[0]}")
            elif not {int(n) for n in re.findall(r"\d+", match["nums"])} <= invariants:
                wrong.append(f"{ids(source)}: {match[0]}")
        for match in CONVENTION_CITE.finditer(text):
            if int(match["nums"]) not in conventions:
                wrong.append(f"{ids(source)}: {match[0]}")
    assert not wrong, f"cites what is not there: {wrong}"


def test_the_citation_checks_see_the_numbers() -> None:
    """Guard the guards: the parsers find the numbered lists they check against."""
    assert numbered_items("docs/architecture.md", "## 2. Invariants") == set(range(1, 11))
    assert numbered_items("CONTRIBUTING.md", "## Code conventions") == set(range(1, 14))
    assert {"1", "4.3", "4.5", "5"} <= architecture_sections()
    assert BRIEF.search("see " + "DESIGN" + " \u00a73.4") and BRIEF.search("STYLE" + ".md")
    assert ARCHITECTURE_CITE.search("docs/architecture.md, invariants 7 and 8")


# A file of the repository named anywhere (a comment, a docstring, a manifest): ``services/<x>.py``.
REPO_PATH = re.compile(
    rf"(?<![\w./<-])((?:{TOP})/[\w./-]*\w\.(?:py|md|sql|proto|yaml|conf|json|toml|txt))\b"
)
# A module (or a name in one) quoted in a comment or a document: ``projections.ledger.relay``.
MODULE = re.compile(r"`((?:contracts|commands|eventstore|projections|services|bench)(?:\.\w+)+)`")


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_files_named_in_the_repository_exist() -> None:
    """A comment naming a file that was removed (the ledger's old outbox module) is stale."""
    missing = sorted(
        f"{ids(source)}: {path}"
        for source in SOURCES
        for path in set(REPO_PATH.findall(source.read_text(errors="replace")))
        if not (ROOT / path).exists() and not (source.parent / path).exists()
    )
    assert not missing, f"names files that do not exist: {missing}"


def test_modules_named_in_comments_and_documents_exist() -> None:
    stale = []
    for source in SOURCES:
        for name in set(MODULE.findall(source.read_text(errors="replace"))):
            parts = name.split(".")
            known = next((k for k in range(len(parts), 0, -1) if _module_file(parts[:k])), 0)
            module = _module_file(parts[:known]) if known else None
            if module is None or (
                known < len(parts)
                and not re.search(rf"\b{re.escape(parts[known])}\b", module.read_text())
            ):
                stale.append(f"{ids(source)}: {name}")
    assert not stale, f"names modules or names that do not exist: {sorted(stale)}"


def test_the_editor_settings_match_the_formatter() -> None:
    editorconfig = (ROOT / ".editorconfig").read_text()
    python = editorconfig.split("[*.{py,pyi}]", 1)[1].split("\n[", 1)[0]
    width = re.search(r"^line-length = (\d+)$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert width and f"max_line_length = {width.group(1)}" in python
    assert "indent_size = 4" in editorconfig and "end_of_line = lf" in editorconfig
