"""Run the ledger projection in-process for tests and wait for it to reach a position."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from eventstore import EventStore
from projections import tracking
from projections.ledger.metrics import LedgerMetrics
from projections.ledger.migrate import apply_migrations
from projections.ledger.projection import LedgerProjection
from projections.ledger.schema import LIVE_SCHEMA
from projections.metrics import ProjectionMetrics
from projections.runner import ProjectionRunner, RunnerConfig


async def migrate(url: str) -> None:
    """Apply the ledger migrations to ``url``."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await apply_migrations(conn)


async def position(url: str, stream: str, schema: str = LIVE_SCHEMA) -> int:
    """Return the projection's tracking position (0 before the first batch)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        try:
            return await tracking.position(conn, schema, stream)
        except psycopg.errors.UndefinedTable:
            return 0


async def wait_for_position(url: str, stream: str, target: int, within: float = 20.0) -> None:
    """Wait until the projection reached ``target`` (raise TimeoutError otherwise)."""
    deadline = time.monotonic() + within
    while (pos := await position(url, stream)) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"projection at {pos}, wanted {target}")
        await asyncio.sleep(0.05)


async def wait_outbox_empty(url: str, within: float = 20.0) -> None:
    """Wait until the relay has published every entry (its position reached the table's end)."""
    deadline = time.monotonic() + within
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "SELECT (SELECT max((stream_sequence, leg_index)) FROM ledger.entries)"
                " <= (SELECT max((last_sequence, last_leg)) FROM ledger_ops.relay_position)"
                " OR NOT EXISTS (SELECT 1 FROM ledger.entries)"
            )
            row = await cur.fetchone()
            if row is not None and row[0]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the relay has not published every entry")
            await asyncio.sleep(0.05)


def ledger_runner(url: str, store: EventStore, **config: Any) -> ProjectionRunner:
    """A runner of the ledger projection with its own metrics."""
    metrics = LedgerMetrics()
    return ProjectionRunner(
        LedgerProjection(url, store, metrics),
        store,
        url,
        ProjectionMetrics(metrics.registry),
        RunnerConfig(**config),
    )


@contextlib.asynccontextmanager
async def running_projector(
    url: str, store: EventStore, **config: Any
) -> AsyncIterator[ProjectionRunner]:
    """Migrate, run the ledger projection in a task, stop it on exit."""
    await migrate(url)
    runner = ledger_runner(url, store, **config)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield runner
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
