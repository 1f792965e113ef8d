"""``jetledger completion bash|zsh|…``: a shell completion script, generated from the parser itself.

shtab walks the same argparse tree ``jetledger --help`` prints, so every command, action, option
and choice completes, and a new command completes as soon as it is registered. The script is
static: completing costs the shell nothing and never starts Python.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import shtab

from services.settings import Settings

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(subparsers: Subparsers) -> None:
    """Add ``completion``."""
    completion = subparsers.add_parser(
        "completion", help="print a shell completion script (bash, zsh, …)"
    )
    completion.add_argument("shell", choices=shtab.SUPPORTED_SHELLS, help="the shell to complete")
    completion.set_defaults(handler=print_completion)


def script(shell: str) -> str:
    """The completion script of ``jetledger`` for ``shell``."""
    from services.cli.main import build_parser  # the whole tree, built as the CLI builds it

    return str(shtab.complete(build_parser(), shell=shell))


def print_completion(args: argparse.Namespace, settings: Settings) -> int:
    """Print the script on stdout."""
    del settings
    print(script(args.shell))
    return 0
