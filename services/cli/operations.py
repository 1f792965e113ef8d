"""``jetledger provision``, ``migrate``, ``backup`` and ``restore``: what an operator (or a
Kubernetes Job) runs around the services, never the services themselves.

- ``provision`` creates or updates the streams (replicas, duplicate window, subjects): it needs
  stream-admin rights on NATS, which the services do not hold; run it before they start.
- ``migrate`` creates or migrates the Postgres schemas (ledger, notifications); idempotent.
- ``backup DIR`` writes the state that cannot be rebuilt: the webhook delivery state (Postgres,
  ``COPY``), then both streams through JetStream's snapshot API (``eventstore.backup``), and a
  ``manifest.json``. Projections are not backed up: they are rebuilt from the streams.
- ``restore DIR`` puts it back on an empty system: the streams (refused if they exist), the
  schemas, the delivery state (refused if there is any); start the services after it, and the
  projections rebuild from the restored streams without sending a delivered webhook again.
The runbook is in ops/README.md ("Backup and restore").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import sql

from contracts.errors import AlreadyExists, InvalidArgument
from eventstore.backup import read_backup, restore_stream, snapshot_stream
from projections.notifications.schema import ops_schema
from services.cli.output import console
from services.preflight import SCHEMAS, migrate, provision
from services.settings import Settings
from services.wiring import command_database_url, connect_client

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

FORMAT: Final = 1
MANIFEST: Final = "manifest.json"
DELIVERIES_FILE: Final = "deliveries.copy"
# The delivery state's columns, named: a restore into a newer schema keeps working.
DELIVERY_COLUMNS: Final = (
    "delivery_id", "notification_id", "card_id", "scope", "endpoint_id", "body", "status",
    "attempts", "next_attempt_at", "last_http_status", "last_error", "created_at", "delivered_at",
    "traceparent",
)  # fmt: skip


def register(subparsers: Subparsers) -> None:
    """Add ``provision``, ``migrate``, ``backup`` and ``restore``."""
    provision = subparsers.add_parser(
        "provision", help="create or update the streams (needs NATS stream-admin rights)"
    )
    provision.set_defaults(handler=run_provision)
    migrate = subparsers.add_parser("migrate", help="create or migrate the Postgres schemas")
    migrate.add_argument(
        "--only", choices=SCHEMAS, default="", help="one projection's schema (default: both)"
    )
    migrate.set_defaults(handler=run_migrate)
    backup = subparsers.add_parser(
        "backup", help="back up the streams and the webhook delivery state into a directory"
    )
    backup.add_argument("directory", type=Path, help="a new or empty directory")
    backup.set_defaults(handler=run_backup)
    restore = subparsers.add_parser(
        "restore", help="restore a backup onto an empty system (before the services start)"
    )
    restore.add_argument("directory", type=Path, help="a directory `jetledger backup` wrote")
    restore.set_defaults(handler=run_restore)


# --- provision and migrate ----------------------------------------------------------------------


def run_provision(args: argparse.Namespace, settings: Settings) -> int:
    del args
    streams = asyncio.run(provision(settings))
    console().print(
        f"streams {', '.join(streams)} provisioned: {settings.stream_replicas} replica(s),"
        f" duplicate window {settings.duplicate_window_seconds}s"
    )
    return 0


def run_migrate(args: argparse.Namespace, settings: Settings) -> int:
    only = getattr(args, "only", "")
    applied = asyncio.run(migrate(settings, only))
    lines = []
    if only in ("", "ledger"):
        lines.append(
            f"applied ledger migrations {applied}" if applied else "ledger schema up to date"
        )
    if only in ("", "notifications"):
        lines.append(f"notification schema {settings.notification_schema} ready")
    console().print("; ".join(lines))
    return 0


# --- backup -------------------------------------------------------------------------------------


def _deliveries_table(settings: Settings) -> sql.Composed:
    return sql.SQL("{}.deliveries").format(sql.Identifier(ops_schema(settings.notification_schema)))


async def _has_deliveries_table(conn: psycopg.AsyncConnection[Any], settings: Settings) -> bool:
    name = f"{ops_schema(settings.notification_schema)}.deliveries"
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def dump_deliveries(settings: Settings, target: Path) -> int | None:
    """``COPY`` the delivery state to ``target`` (binary); ``None`` if it has no table here."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in DELIVERY_COLUMNS)
    table = _deliveries_table(settings)
    connect = psycopg.AsyncConnection.connect(command_database_url(settings))
    async with await connect as conn:
        # one snapshot for the whole read: the rows counted are the rows copied
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await conn.set_read_only(True)
        if not await _has_deliveries_table(conn, settings):
            return None
        count = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
        found = await count.fetchone()
        copy_sql = sql.SQL(
            "COPY (SELECT {} FROM {} ORDER BY delivery_id) TO STDOUT (FORMAT binary)"
        ).format(columns, table)
        async with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            blocks = [bytes(block) async for block in copy]
        await conn.rollback()
    await asyncio.to_thread(target.write_bytes, b"".join(blocks))
    return int(found[0]) if found else 0


def prepare_directory(directory: Path) -> None:
    """Create ``directory``, or accept it empty: a backup never mixes with another's files."""
    if directory.exists() and any(directory.iterdir()):
        raise InvalidArgument(f"{directory} is not empty: back up into a new directory")
    directory.mkdir(parents=True, exist_ok=True)


async def backup(settings: Settings, directory: Path) -> dict[str, Any]:
    """Write a backup of ``settings``' system into ``directory``; return its manifest.

    The delivery state is copied first, the streams after: a notification whose delivery the
    copy lacks is queued again by the rebuild (at least once, same idempotency key); one the
    copy has is never sent twice.
    """
    prepare_directory(directory)
    started = time.monotonic()
    deliveries = await dump_deliveries(settings, directory / DELIVERIES_FILE)
    nc = await connect_client(settings, "backup")
    try:
        streams = [
            await snapshot_stream(nc, name, directory)
            for name in (settings.streams.source, settings.streams.derived)
        ]
    finally:
        await nc.close()
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "jetledger": _version(),
        "seconds": round(time.monotonic() - started, 3),
        "streams": [
            {
                "stream": s.stream,
                "messages": s.messages,
                "last_sequence": s.last_sequence,
                "bytes": s.bytes,
                "sha256": s.sha256,
            }
            for s in streams
        ],
        "postgres": {
            "notification_schema": settings.notification_schema,
            "deliveries": None
            if deliveries is None
            else {"file": DELIVERIES_FILE, "rows": deliveries},
        },
    }
    await asyncio.to_thread(
        (directory / MANIFEST).write_text, json.dumps(manifest, indent=2) + "\n"
    )
    return manifest


def _version() -> str:
    try:
        return metadata.version("jetledger")
    except metadata.PackageNotFoundError:
        return "unknown"


def run_backup(args: argparse.Namespace, settings: Settings) -> int:
    manifest = asyncio.run(backup(settings, args.directory))
    for s in manifest["streams"]:
        console().print(
            f"stream {s['stream']}: {s['messages']} messages to sequence {s['last_sequence']},"
            f" {s['bytes']} bytes"
        )
    deliveries = manifest["postgres"]["deliveries"]
    console().print(
        "webhook delivery state: none here (no notification schema)"
        if deliveries is None
        else f"webhook delivery state: {deliveries['rows']} rows"
    )
    console().print(f"backup written to {args.directory} in {manifest['seconds']}s")
    return 0


# --- restore ------------------------------------------------------------------------------------


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise InvalidArgument(f"{directory} is not a jetledger backup (no {MANIFEST})")
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise InvalidArgument(f"{path}: backup format {manifest.get('format')} is not {FORMAT}")
    return manifest


async def restore_deliveries(settings: Settings, source: Path) -> int:
    """``COPY`` the delivery state back (the table must be empty); return the rows restored."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in DELIVERY_COLUMNS)
    table = _deliveries_table(settings)
    connect = psycopg.AsyncConnection.connect(command_database_url(settings))
    async with await connect as conn, conn.transaction():
        cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
        found = await cur.fetchone()
        if found and found[0]:
            raise AlreadyExists(
                f"{ops_schema(settings.notification_schema)}.deliveries holds {found[0]} rows:"
                " restore onto an empty system"
            )
        async with conn.cursor() as copy_cur:
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(table, columns)
            async with copy_cur.copy(copy_sql) as copy:
                with source.open("rb") as data:
                    for block in iter(lambda: data.read(1 << 20), b""):
                        await copy.write(block)
        # new deliveries continue after the restored ids
        await conn.execute(
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence({}, 'delivery_id'),"
                " greatest((SELECT max(delivery_id) FROM {}), 1))"
            ).format(sql.Literal(f"{ops_schema(settings.notification_schema)}.deliveries"), table)
        )
        cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
        restored = await cur.fetchone()
    return int(restored[0]) if restored else 0


async def restore(settings: Settings, directory: Path) -> dict[str, Any]:
    """Restore the backup in ``directory``: streams, schemas, delivery state. Returns a summary."""
    manifest = read_manifest(directory)
    names = [s["stream"] for s in manifest["streams"]]
    expected = [settings.streams.source, settings.streams.derived]
    if names != expected:
        raise InvalidArgument(
            f"the backup holds streams {names}, this system's are {expected}"
            " (JETLEDGER_STREAM, JETLEDGER_DERIVED_STREAM)"
        )
    for name in names:
        read_backup(directory, name)  # every file present and matching its hash, before anything
    summary: dict[str, Any] = {"streams": {}, "deliveries": None}
    nc = await connect_client(settings, "restore")
    try:
        for name in names:
            try:
                state = await restore_stream(nc, directory, name)
            except AlreadyExists as exc:
                raise AlreadyExists(
                    f"stream {name} exists: restore onto an empty NATS (or delete the stream)"
                ) from exc
            summary["streams"][name] = state
    finally:
        await nc.close()
    await migrate(settings)
    deliveries = manifest["postgres"]["deliveries"]
    if deliveries is not None:
        summary["deliveries"] = await restore_deliveries(settings, directory / deliveries["file"])
    return summary


def run_restore(args: argparse.Namespace, settings: Settings) -> int:
    summary = asyncio.run(restore(settings, args.directory))
    for name, state in summary["streams"].items():
        console().print(
            f"stream {name}: {state.get('messages', 0)} messages to sequence {state.get('last_seq', 0)}"
        )
    if summary["deliveries"] is not None:
        console().print(f"webhook delivery state: {summary['deliveries']} rows")
    console().print("restored: start the services; the projections rebuild from the streams")
    return 0
