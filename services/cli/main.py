"""The ``jetledger`` command line: one entry point, one subcommand module per area.

Each area module under ``services/cli/`` exposes ``register(subparsers)``, which adds its
subcommands and sets ``handler`` on them: ``handler(args, settings) -> int`` (the exit status).
Every command's help ends with examples (``services/cli/examples.py``). Whatever goes wrong reaches
the user here, in one place, as one line on stderr and an exit status (``services/cli/failures.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from importlib import metadata
from typing import Final, Protocol

from services.cli.examples import add_examples
from services.cli.failures import explain
from services.dev.state import running_settings
from services.settings import Settings

# The areas, in the order `jetledger --help` lists them; each is services/cli/<name>.py.
AREAS: Final = (
    "demo",
    "dev",
    "cards",
    "transactions",
    "ledger",
    "notifications",
    "events",
    "security",
    "operations",
    "completion",
)
# libpq's (and so psycopg's) default for a connection that gets no answer is 130 s; a command
# facing a stopped Postgres must give up within seconds. An explicit PGCONNECT_TIMEOUT wins.
POSTGRES_CONNECT_TIMEOUT_SECONDS: Final = "2"  # libpq: at least 2


class _Area(Protocol):
    def register(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...


def version() -> str:
    """The installed distribution's version."""
    try:
        return metadata.version("jetledger")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _areas() -> list[_Area]:
    """The subcommand modules, imported lazily so `jetledger --help` stays fast."""
    import importlib

    found: list[_Area] = []
    for name in AREAS:
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
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for area in _areas():
        area.register(subparsers)
    add_examples(parser)
    return parser


@contextlib.contextmanager
def _environment_default(name: str, value: str) -> Iterator[None]:
    """Set ``name`` for the block unless the user has; put things back after (``main`` may run
    inside another program, such as the test suite)."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has printed them
        return exc.code if isinstance(exc.code, int) else 2
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        # Commands that need NATS/Postgres find a running `jetledger dev` when no URL is set.
        settings = running_settings(Settings.from_env())
        with _environment_default("PGCONNECT_TIMEOUT", POSTGRES_CONNECT_TIMEOUT_SECONDS):
            status: int = handler(args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        failure = explain(exc)
        if failure is None:
            raise  # not a failure we know: a bug, and its traceback is what a report needs
        print(f"jetledger: error: {failure.message}", file=sys.stderr)
        return failure.status
    return status


def run() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
