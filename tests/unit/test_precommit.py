"""The pre-commit hooks run what ``make lint typecheck protolint`` runs, from the project's .venv.

A hook that drifted from the Makefile would pass commits that ``make test`` then fails (or the
reverse); one that names a remote repository would download tools at commit time.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".pre-commit-config.yaml"


def makefile_commands(target: str) -> list[list[str]]:
    """The recipe lines of a Makefile target, its ``$(VARIABLES)`` expanded (``$(BIN)`` is
    ``.venv/bin``)."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) [:?]?= (.*)$", text, re.M))

    def expand(line: str) -> str:
        while "$(" in line:
            line = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], line)
        return line

    found = re.search(rf"^{target}:[^\n]*\n((?:\t[^\n]*\n)+)", text, re.M)
    assert found, f"no target {target} in the Makefile"
    return [shlex.split(expand(line.strip())) for line in found.group(1).splitlines()]


def hooks() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(CONFIG.read_text())
    return {
        hook["id"]: {**hook, "repo": repo["repo"]}
        for repo in config["repos"]
        for hook in repo["hooks"]
    }


def test_every_hook_is_local_and_runs_a_tool_from_the_venv() -> None:
    found = hooks()
    assert found
    for hook in found.values():
        assert hook["repo"] == "local" and hook["language"] == "system", hook
        assert ".venv/bin/" in hook["entry"], hook


def test_the_hooks_run_the_makefiles_commands() -> None:
    found = hooks()
    ruff_check, ruff_format, vulture = makefile_commands("lint")
    # The Makefile passes "."; pre-commit passes the changed files instead, which ruff then
    # filters through the same excludes (--force-exclude).
    assert shlex.split(found["ruff-check"]["entry"]) == [*ruff_check[:-1], "--force-exclude"]
    assert shlex.split(found["ruff-format"]["entry"]) == [*ruff_format[:-1], "--force-exclude"]
    assert ruff_check[-1] == ruff_format[-1] == "."
    assert shlex.split(found["vulture"]["entry"]) == vulture
    assert found["vulture"]["pass_filenames"] is False
    (mypy,) = makefile_commands("typecheck")
    assert shlex.split(found["mypy"]["entry"]) == mypy
    assert found["mypy"]["pass_filenames"] is False
    (buf,) = makefile_commands("protolint")
    assert " ".join(buf) in found["buf-lint"]["entry"]


def test_pre_commit_accepts_the_configuration() -> None:
    done = subprocess.run(
        [str(ROOT / ".venv/bin/pre-commit"), "validate-config", str(CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
