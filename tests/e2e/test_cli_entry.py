"""The CLI's own surface, through its real entry points: ``--version``, shell completion, and the
examples at the end of every command's help (which must parse to the command they illustrate).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import shtab

from services.cli.examples import EXAMPLES, subcommands
from services.cli.main import build_parser, main

JETLEDGER = str(Path(sys.executable).parent / "jetledger")
# Everything after one of these tokens is the shell's, not jetledger's.
SHELL_TOKENS = frozenset({"||", "&&", "|", ">", ">>", ";"})


def command_paths() -> list[str]:
    return [" ".join(path) for path, _ in subcommands(build_parser())]


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_flags_print_the_installed_version(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([flag]) == 0
    assert capsys.readouterr().out.strip() == f"jetledger {metadata.version('jetledger')}"
    done = subprocess.run(
        [JETLEDGER, flag], capture_output=True, text=True, timeout=60, check=False
    )
    assert (
        done.returncode == 0 and done.stdout.strip() == f"jetledger {metadata.version('jetledger')}"
    )


def test_usage_errors_and_help_return_a_status_instead_of_raising(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == 0
    assert main(["card", "issue"]) == 2  # required arguments missing
    assert "required" in capsys.readouterr().err


def test_bash_completion_is_valid_bash_and_completes_commands(tmp_path: Path) -> None:
    done = subprocess.run(
        [JETLEDGER, "completion", "bash"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    script = tmp_path / "jetledger.bash"
    script.write_text(done.stdout)
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    # Ask the completion function what a user pressing Tab would get.
    probe = (
        f"source {shlex.quote(str(script))}\n"
        'complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=();'
        ' _shtab_jetledger; echo "${COMPREPLY[*]}"; }\n'
        "complete_words jetledger ca\n"
        "complete_words jetledger tx c\n"
        "complete_words jetledger card issue --t\n"
        "complete_words jetledger completion z\n"
    )
    lines = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, timeout=30, check=True
    ).stdout.splitlines()
    assert lines == ["card", "create capture", "--type", "zsh"]


@pytest.mark.parametrize("shell", shtab.SUPPORTED_SHELLS)
def test_every_supported_shell_gets_a_script(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["completion", shell]) == 0
    out = capsys.readouterr().out
    assert "jetledger" in out and "verify" in out and "notifications" in out


def test_an_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "cmd.exe"]) == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: p or "jetledger")
def test_every_command_help_ends_with_examples(
    path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*path.split(), "--help"]) == 0
    out = capsys.readouterr().out
    head, _, examples = out.partition("\nexamples:\n")
    assert examples, f"`jetledger {path} --help` shows no examples"
    lines = [line.strip() for line in examples.splitlines() if line.strip()]
    assert lines and all(line.startswith("jetledger ") for line in lines), examples
    assert "usage: jetledger" in head


def _argv(example: str) -> list[str]:
    tokens = shlex.split(example, comments=True)
    assert tokens[0] == "jetledger", example
    argv: list[str] = []
    for token in tokens[1:]:
        if token in SHELL_TOKENS:
            break
        argv.append(token)
    return argv


@pytest.mark.parametrize("path", sorted(EXAMPLES), ids=lambda p: p or "jetledger")
def test_every_example_parses_to_the_command_it_illustrates(path: str) -> None:
    parser = build_parser()
    known = set(command_paths())
    assert path in known, f"examples for {path!r}, which is no command"
    for example in EXAMPLES[path]:
        argv = _argv(example)
        if "--help" in argv:
            continue  # argparse would print help and exit; the command itself is checked below
        args = parser.parse_args(argv)
        words = [w for w in argv if not w.startswith("-")]
        # An example of `card` may show any card action; of `card issue`, only that action.
        assert " ".join(words).startswith(path), (path, example)
        assert callable(getattr(args, "handler", None)), example
