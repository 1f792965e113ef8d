"""Migrations: applied once, safely when several replicas start at the same moment."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from projections.ledger.migrate import apply_migrations
from projections.ledger.schema import migrations

pytestmark = pytest.mark.timeout(30)


async def test_concurrent_startups_apply_each_migration_once(ledger_db: str) -> None:
    async def replica() -> list[int]:
        async with await psycopg.AsyncConnection.connect(ledger_db) as conn:
            return await apply_migrations(conn)

    results = await asyncio.gather(*(replica() for _ in range(4)))
    everything = [m.version for m in migrations()]
    assert sorted(v for r in results for v in r) == everything  # each applied exactly once
    async with await psycopg.AsyncConnection.connect(ledger_db) as conn:
        cur = await conn.execute("SELECT version FROM ledger_ops.schema_migrations ORDER BY 1")
        assert [r[0] for r in await cur.fetchall()] == everything
        assert await apply_migrations(conn) == []
