"""Start-up work done once, before the services (``jetledger provision``, ``jetledger migrate``,
the Kubernetes Jobs, ``jetledger dev``), and the services' check that it was done.

A service holds no stream-admin rights and runs no DDL: it asks whether its streams and schemas
exist, and if not stops at once with one line that says which command creates them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

from contracts.errors import Unavailable
from eventstore import EventStore
from projections.ledger.migrate import apply_migrations
from projections.ledger.schema import migrations
from projections.notifications.schema import create_schemas, schema_missing
from services.settings import Settings
from services.wiring import command_database_url, connect_client


class NotProvisioned(Unavailable):
    """The streams or the schemas a service needs do not exist (yet)."""


async def provision(settings: Settings) -> list[str]:
    """Create or update both streams (idempotent); return their names."""
    nc = await connect_client(settings, "provision")
    try:
        await EventStore(nc, settings.streams).ensure_streams(
            replicas=settings.stream_replicas,
            duplicate_window=timedelta(seconds=settings.duplicate_window_seconds),
        )
    finally:
        await nc.close()
    return [settings.streams.source, settings.streams.derived]


SCHEMAS = ("ledger", "notifications")


async def migrate(settings: Settings, only: str = "") -> list[int]:
    """Apply the ledger migrations and create the notification schemas (or ``only`` one of the
    two); return the ledger migrations that were new."""
    applied: list[int] = []
    async with await psycopg.AsyncConnection.connect(command_database_url(settings)) as conn:
        if only in ("", "ledger"):
            applied = await apply_migrations(conn)
        if only in ("", "notifications"):
            await create_schemas(conn, settings.notification_schema)
        await conn.commit()
    return applied


async def require_ledger_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    """``NotProvisioned`` unless every ledger migration has been applied."""
    cur = await conn.execute("SELECT to_regclass('ledger_ops.schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    done: set[int] = set()
    if row and row[0]:
        cur = await conn.execute("SELECT version FROM ledger_ops.schema_migrations")
        done = {int(r[0]) for r in await cur.fetchall()}
    pending = [m.version for m in migrations() if m.version not in done]
    if pending:
        raise NotProvisioned(
            f"ledger migrations {pending} are not applied: run `jetledger migrate`"
            " (the jetledger-migrate Job) before the services"
        )


async def require_notification_schema(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """``NotProvisioned`` unless the notification schemas are complete."""
    missing = await schema_missing(conn, schema)
    if missing:
        raise NotProvisioned(
            f"notification schema {schema} lacks {missing}: run `jetledger migrate`"
            " (the jetledger-migrate Job) before the services"
        )
