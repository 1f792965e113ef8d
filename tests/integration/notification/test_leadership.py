"""One writer per projection (docs/architecture.md, invariant 8): a standby projector waits, and takes over when needed."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from contracts.subjects import StreamNames
from eventstore import EventStore
from projections.notifications.schema import create_schemas
from tests.notifykit import (
    Events,
    append,
    create_streams,
    fresh_database,
    nats_client,
    notification_runner,
)

pytestmark = pytest.mark.timeout(60)


async def _count(db: str) -> int:
    async with await psycopg.AsyncConnection.connect(db) as conn:
        cur = await conn.execute("SELECT count(*) FROM notify.notifications")
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def _until_count(db: str, n: int) -> None:
    for _ in range(400):  # 20 s
        if await _count(db) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {n} notifications")


async def test_a_standby_waits_then_takes_over_without_loss_or_repeat(
    nats_url: str, database_url: str, streams: StreamNames
) -> None:
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        await create_streams(js, streams)
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            await create_schemas(conn, "notify")
        store = EventStore(nc, streams)
        runners = [notification_runner(store, db) for _ in range(2)]
        stops = [asyncio.Event() for _ in runners]
        tasks = [asyncio.create_task(r.run(stop)) for r, stop in zip(runners, stops, strict=True)]
        try:
            waits = [asyncio.create_task(r.leading.wait()) for r in runners]
            await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
            await asyncio.sleep(0.5)
            assert [r.leading.is_set() for r in runners].count(True) == 1
            leader = next(i for i, r in enumerate(runners) if r.leading.is_set())
            card = Events("c1")
            await append(js, streams, card.issue(), card.fund(1_000), card.purchase(10))
            await _until_count(db, 2)
            tasks[leader].cancel()  # the leader dies; its connection (and lock) goes with it
            await asyncio.gather(tasks[leader], return_exceptions=True)
            await append(js, streams, card.purchase(20), card.purchase(30))
            await _until_count(db, 4)
            assert runners[1 - leader].leading.is_set()
            await asyncio.sleep(0.3)
            assert await _count(db) == 4
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
