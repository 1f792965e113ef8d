"""Apply the ledger's versioned migrations at start-up, safely when several replicas start at once.

Every replica runs ``apply_migrations`` on start. A transaction-scoped advisory lock serialises
them: the first applies what is missing, the others then find nothing left to do. Each migration
runs in the same transaction as its row in ``ledger_ops.schema_migrations``, so a crash leaves
either all of it or none.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from projections.ledger.schema import Migration, migrations

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key for migrations: an arbitrary constant of this projection.
MIGRATION_LOCK_KEY = 0x4A4C_4D49  # "JLMI"


async def apply_migrations(
    conn: psycopg.AsyncConnection[Any], todo: list[Migration] | None = None
) -> list[int]:
    """Apply the migrations not yet applied; return the versions this call applied."""
    todo = migrations() if todo is None else todo
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        await conn.execute("CREATE SCHEMA IF NOT EXISTS ledger_ops")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS ledger_ops.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM ledger_ops.schema_migrations")
        done = {int(row[0]) for row in await cur.fetchall()}
        for migration in todo:
            if migration.version in done:
                continue
            await conn.execute(migration.statements.encode())
            await conn.execute(
                "INSERT INTO ledger_ops.schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied_now.append(migration.version)
            log.info("migration applied", extra={"version": migration.version})
    return applied_now
