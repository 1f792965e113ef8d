"""The ``jetledger`` command line: one entry point, one subcommand module per area.

Each area module under ``services/cli/`` exposes ``register(subparsers)``, which adds its
subcommands and sets ``handler`` on them: ``handler(args, settings) -> int`` (the exit status).
Errors reach the user as one line on stderr and a non-zero exit status (``exit_code_for``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Protocol

from contracts.errors import (
    AlreadyExists,
    Declined,
    InvalidArgument,
    LedgerError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from services.dev.state import running_settings
from services.settings import Settings


class _Area(Protocol):
    def register(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...


# Exit statuses: 0 ok, 1 failure/difference found, 2 usage or invalid argument, 3 not found,
# 4 conflict/already exists, 5 declined (failed precondition), 6 unavailable, 7 not authenticated
# or not allowed (no token, an unknown one, or one without the role the command needs).
EXIT_CODES: dict[type[LedgerError], int] = {
    InvalidArgument: 2,
    NotFound: 3,
    AlreadyExists: 4,
    Declined: 5,
    Unavailable: 6,
    Unauthenticated: 7,
    PermissionDenied: 7,
}


def exit_code_for(error: LedgerError) -> int:
    """Map a domain error to the CLI's exit status."""
    for kind, code in EXIT_CODES.items():
        if isinstance(error, kind):
            return code
    return 1


def _areas() -> list[_Area]:
    """The subcommand modules, imported lazily so `jetledger --help` stays fast."""
    import importlib

    names = [
        "demo",
        "dev",
        "cards",
        "transactions",
        "ledger",
        "notifications",
        "events",
        "security",
    ]
    found: list[_Area] = []
    for name in names:
        try:
            module = importlib.import_module(f"services.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"services.cli.{name}":
                raise
            continue
        found.append(module)
    return found


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="jetledger",
        description="Event-sourced card ledger on NATS JetStream + Postgres.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for area in _areas():
        area.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        # Commands that need NATS/Postgres find a running `jetledger dev` when no URL is set.
        settings = running_settings(Settings.from_env())
        status: int = handler(args, settings)
    except LedgerError as exc:
        print(f"jetledger: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130
    return status


def run() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
