"""``jetledger replay ledger`` and ``jetledger verify``: rebuild and prove the ledger projection.

- ``replay ledger`` rebuilds the projection from sequence 0 into a shadow schema (ordered
  consumer, COPY) with a progress bar, then swaps it in atomically while the service keeps serving
  (``--no-swap`` keeps the shadow for inspection). It never re-emits ``ledger.entry_created``.
- ``verify`` folds the stream independently and compares per-account balances and entry checksums
  with the live tables; exit status 1 and a table of differences when they disagree.

Other areas add their own ``replay <projection>`` with ``services.cli.parsing.replay_subparsers``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

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

from contracts.errors import InvalidArgument
from contracts.money import format_minor
from projections.ledger.migrate import apply_migrations
from projections.ledger.rebuild import Progress as RebuildProgress
from projections.ledger.rebuild import Rebuild
from projections.ledger.verify import VerifyReport, verify
from services.cli.parsing import replay_subparsers
from services.settings import Settings
from services.wiring import connect_client

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(subparsers: Subparsers) -> None:
    """Add ``replay ledger`` and ``verify``."""
    replay = replay_subparsers(subparsers).add_parser(
        "ledger", help="rebuild the ledger projection (shadow schema, COPY, atomic swap)"
    )
    replay.add_argument(
        "--no-swap", action="store_true", help="build the shadow schema but do not swap it in"
    )
    replay.add_argument("--chunk", type=int, default=5_000, help="events per COPY chunk")
    replay.set_defaults(handler=replay_ledger)
    check = subparsers.add_parser(
        "verify", help="prove the ledger tables equal an independent fold of the stream"
    )
    check.add_argument("--schema", default="ledger", help="projection schema to check")
    check.set_defaults(handler=verify_ledger)


def _require(settings: Settings) -> None:
    if not settings.nats_url or not settings.database_url:
        raise InvalidArgument("set JETLEDGER_NATS_URL and JETLEDGER_DATABASE_URL")


async def _connect(settings: Settings) -> Any:
    return await connect_client(settings, "cli")


def replay_ledger(args: argparse.Namespace, settings: Settings) -> int:
    """Rebuild the ledger projection with a progress bar."""
    _require(settings)
    return asyncio.run(_replay(args, settings))


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    console = Console(stderr=True)
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        await apply_migrations(conn)
    nc = await _connect(settings)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("seq · {task.fields[events]} events · {task.fields[rate]:,.0f} events/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("replay", total=None, events=0, rate=0.0)

            def show(p: RebuildProgress) -> None:
                bar.update(
                    task,
                    description=p.phase,
                    completed=p.position,
                    total=max(p.target, p.position, 1),
                    events=p.events,
                    rate=p.rate,
                )

            rebuild = Rebuild(
                settings.database_url,
                nc.jetstream(),
                settings.streams,
                chunk=args.chunk,
                on_progress=show,
            )
            result = await rebuild.run(swap=not args.no_swap)
    finally:
        await nc.close()
    where = "swapped in as 'ledger'" if result.swapped else f"kept as schema {result.schema!r}"
    console.print(
        f"rebuilt the ledger from {result.events} events up to {settings.stream}:{result.position}"
        f" in {result.seconds:.1f}s ({result.events / max(result.seconds, 1e-9):,.0f} events/s);"
        f" {where}"
    )
    return 0


def verify_ledger(args: argparse.Namespace, settings: Settings) -> int:
    """Compare the ledger tables with an independent fold; exit 1 on any difference."""
    _require(settings)
    return asyncio.run(_verify(args, settings))


async def _verify(args: argparse.Namespace, settings: Settings) -> int:
    nc = await _connect(settings)
    try:
        report = await verify(settings.database_url, nc.jetstream(), settings.streams, args.schema)
    finally:
        await nc.close()
    render(report, Console())
    return 0 if report.ok else 1


def render(report: VerifyReport, console: Console, limit: int = 50) -> None:
    """Print a verify report: one summary line, and the differences as a table."""
    head = (
        f"{report.stream} up to sequence {report.position}: {report.events} events,"
        f" {report.accounts} account balances"
    )
    if report.ok:
        console.print(f"[green]OK[/] {head}: tables equal the stream")
        return
    console.print(f"[red]MISMATCH[/] {head}: {len(report.differences)} differences")
    for side, totals in (("stream", report.stream_totals), ("tables", report.table_totals)):
        for currency, total in sorted(totals.items()):
            if total:
                console.print(
                    f"  Σ balances in {currency} per {side} = {format_minor(total, currency)} (must be 0)"
                )
    table = Table("account", "currency", "field", "in tables", "in stream")
    for diff in report.differences[:limit]:
        table.add_row(
            diff.account_id, diff.currency, diff.field, str(diff.in_tables), str(diff.in_stream)
        )
    console.print(table)
    if len(report.differences) > limit:
        console.print(f"… and {len(report.differences) - limit} more")
