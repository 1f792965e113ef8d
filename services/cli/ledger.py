"""``jetledger replay ledger``, ``jetledger verify`` and ``jetledger repair derived``.

- ``replay ledger`` rebuilds the projection from sequence 0 into a shadow schema (the event
  store's reader, COPY) with a progress bar, then swaps it in atomically while the service keeps
  serving (``--no-swap`` keeps the shadow for inspection). It never re-emits ``ledger.entry_created``.
- ``verify`` proves the projections: each caught up with the stream (waits ``--wait`` seconds for
  them), the ledger tables equal an independent fold, the derived stream holds exactly the entries
  table, the notification rows equal their fold. One line per failed check, exit 1.
- ``repair derived`` re-emits the entries missing from the derived stream (idempotent).

With NATS or Postgres unreachable, each prints one line and exits 6 within seconds.
Other areas add their own ``replay <projection>`` with ``services.cli.parsing.replay_subparsers``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from eventstore.loop import run_loop, tune_gc
from projections import tracking
from projections.ledger.derived import repair_derived
from projections.ledger.migrate import apply_migrations
from projections.ledger.rebuild import Progress as RebuildProgress
from projections.ledger.rebuild import Rebuild
from projections.ledger.schema import LIVE_SCHEMA
from projections.ledger.verify import VerifyReport, verify
from projections.notifications.rebuild import verify as verify_notifications
from services.cli.parsing import replay_subparsers
from services.observability.verifymetrics import report_verify
from services.security.audit import audit_all
from services.settings import Settings
from services.wiring import command_database_url, command_store

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

T = TypeVar("T")


def register(subparsers: Subparsers) -> None:
    """Add ``replay ledger``, ``verify`` and ``repair derived``."""
    replay = replay_subparsers(subparsers).add_parser(
        "ledger", help="rebuild the ledger projection (shadow schema, COPY, atomic swap)"
    )
    replay.add_argument(
        "--no-swap", action="store_true", help="build the shadow schema but do not swap it in"
    )
    replay.add_argument("--chunk", type=int, default=5_000, help="events per COPY chunk")
    replay.set_defaults(handler=replay_ledger)
    check = subparsers.add_parser(
        "verify",
        help="prove the projections: caught up, equal to independent folds, derived stream whole",
    )
    check.add_argument("--schema", default=LIVE_SCHEMA, help="ledger projection schema to check")
    check.add_argument(
        "--wait", type=float, default=10.0, metavar="SECONDS",
        help="how long a projection may take to catch up with the stream",
    )  # fmt: skip
    check.add_argument(
        "--metrics-file", default="", metavar="PATH",
        help="also write the result as Prometheus text (node-exporter's textfile collector)",
    )  # fmt: skip
    check.add_argument(
        "--pushgateway", default="", metavar="URL",
        help="also push-add the result to this Prometheus Pushgateway (job jetledger-verify)",
    )  # fmt: skip
    check.set_defaults(handler=verify_all)
    repair = subparsers.add_parser("repair", help="repair what a projection published")
    actions = repair.add_subparsers(dest="what", metavar="WHAT", required=True)
    actions.add_parser(
        "derived", help="re-emit ledger.entry_created for entries missing from the derived stream"
    ).set_defaults(handler=repair_derived_stream)


def run_command(settings: Settings, body: Callable[[], Awaitable[T]]) -> T:
    """Run one command's coroutine (its failures reach the user through ``services.cli.failures``:
    one line, and exit 6 for an unreachable NATS or Postgres)."""
    del settings

    async def run() -> T:
        return await body()

    tune_gc()  # replay and verify are long: the services' loop and collector settings
    return run_loop(run())


@contextmanager
def progress_bar(console: Console, what: str) -> Iterator[Callable[..., None]]:
    """A rich progress bar; yields ``update(description, completed, total, **fields)``."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(what, total=None, note="")

        def update(description: str, completed: int, total: int, note: str = "") -> None:
            bar.update(
                task, description=description, completed=completed, total=max(total, completed, 1),
                note=note,
            )  # fmt: skip

        yield update


def replay_ledger(args: argparse.Namespace, settings: Settings) -> int:
    """Rebuild the ledger projection with a progress bar."""
    return run_command(settings, lambda: _replay(args, settings))


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    console = Console(stderr=True)
    db = command_database_url(settings)
    async with command_store(settings) as store:
        async with await psycopg.AsyncConnection.connect(db) as conn:
            await apply_migrations(conn)
        with progress_bar(console, "replay") as update:

            def show(p: RebuildProgress) -> None:
                note = f"seq · {p.events:,} events · {p.rate:,.0f} events/s"
                update(p.phase, p.position, p.target, note)

            result = await Rebuild(db, store, chunk=args.chunk, on_progress=show).run(
                swap=not args.no_swap
            )
    where = "swapped in as 'ledger'" if result.swapped else f"kept as schema {result.schema!r}"
    console.print(
        f"rebuilt the ledger from {result.events} events up to {settings.stream}:{result.position}"
        f" in {result.seconds:.1f}s ({result.events / max(result.seconds, 1e-9):,.0f} events/s);"
        f" {where}"
    )
    return 0


def verify_all(args: argparse.Namespace, settings: Settings) -> int:
    """Verify the ledger and the notification projection; exit 1 on any failed check."""
    console = Console()
    started = time.monotonic()
    found: int | None = None
    try:
        problems = run_command(settings, lambda: check_projections(settings, console, args))
        found = len(problems)
    finally:  # the result is a metric even when verify could not run (found stays None)
        report_verify(
            found,
            time.monotonic() - started,
            metrics_file=getattr(args, "metrics_file", ""),
            pushgateway=getattr(args, "pushgateway", ""),
        )
    return 1 if problems else 0


async def check_projections(
    settings: Settings, console: Console, args: argparse.Namespace | None = None
) -> list[str]:
    """Run every verification, print one line per result; return the problems found."""
    schema = getattr(args, "schema", LIVE_SCHEMA)
    wait = getattr(args, "wait", 10.0)
    db = command_database_url(settings)
    problems: list[str] = []
    async with command_store(settings) as store:
        # Reach Postgres before the progress bar: an unreachable one is one line, nothing else.
        await (await psycopg.AsyncConnection.connect(db)).close()
        with progress_bar(Console(stderr=True), "verify") as update:
            report = await verify(
                db, store, schema, wait_seconds=wait, derived=schema == LIVE_SCHEMA,
                on_progress=lambda phase, done, total: update(f"ledger: {phase}", done, total),
            )  # fmt: skip
            update("notifications", 0, 1)
            notes = await _verify_notifications(db, store, settings.notification_schema, wait)
            update("event MACs", 0, 1)
            audit = None if store.keyring is None else await audit_all(store, store.keyring)
            update("done", 1, 1)
    if audit is None:
        console.print("[dim]event MACs: security is off here (no keyring); not checked[/]")
    elif audit.ok:
        console.print(f"[green]OK[/] event MACs: all {audit.checked} events check")
    else:
        for finding in audit.findings:
            console.print(f"[red]FORGED[/] {finding}")
        problems += [f"integrity: {finding}" for finding in audit.findings]
    render(report, console)
    problems += [f"ledger: {p}" for p in report.problems()]
    if notes is None:
        console.print("[dim]notifications: not deployed here (no schema); skipped[/]")
    elif notes:
        shown = notes if len(notes) <= 5 else [*notes[:5], f"… and {len(notes) - 5} more"]
        for line in shown:
            console.print(f"[red]MISMATCH[/] notifications: {line}")
        problems += [f"notifications: {p}" for p in notes]
    else:
        console.print("[green]OK[/] notifications: caught up; rows equal an independent fold")
    return problems


async def _verify_notifications(db: str, store: Any, schema: str, wait: float) -> list[str] | None:
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.tracking",))
        row = await cur.fetchone()
        if not (row and row[0]):
            return None
        return await verify_notifications(conn, store, schema, wait_seconds=wait)


def render(report: VerifyReport, console: Console, limit: int = 50) -> None:
    """Print a ledger verify report: one line per check, and the differences as a table."""
    head = (
        f"{report.stream} up to sequence {report.position}: {report.events} events,"
        f" {report.accounts} account balances"
    )
    if report.ok:
        derived = ""
        if report.derived is not None:
            derived = f"; the derived stream holds all {report.derived.entries} entries"
        console.print(f"[green]OK[/] {head}: ledger tables equal the stream{derived}")
        return
    for problem in report.problems():
        console.print(f"[red]FAILED[/] ledger: {problem}")
    if report.differences:
        table = Table("account", "currency", "field", "in tables", "in stream")
        for diff in report.differences[:limit]:
            table.add_row(
                diff.account_id, diff.currency, diff.field, str(diff.in_tables), str(diff.in_stream)
            )
        console.print(table)
        if len(report.differences) > limit:
            console.print(f"… and {len(report.differences) - limit} more")


def repair_derived_stream(args: argparse.Namespace, settings: Settings) -> int:
    """Re-emit the entries missing from the derived stream."""
    return run_command(settings, lambda: _repair(settings))


async def _repair(settings: Settings) -> int:
    db = command_database_url(settings)
    async with command_store(settings) as store:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            position = await tracking.position(conn, LIVE_SCHEMA, settings.stream)
        emitted = await repair_derived(db, store, position)
    print(
        f"re-emitted {emitted} ledger.entry_created events missing from {settings.derived_stream}"
        f" (entries up to {settings.stream}:{position})"
    )
    return 0
