"""Hosting the command index: its schema, its projection runner, and the intake's reader of it.

The command index (``projections.commandindex``) is the intake's own index of recorded command
ids, so the transaction service hosts it: every replica runs a runner (one leads, by lease) and
reads the index through a small pool. The intake's decisions use it only below its position and
read the card's stream above it (``services.intake.handler``), so a lagging or stopped index costs
speed, never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from contracts.subjects import StreamNames
from eventstore import EventStore
from projections.commandindex import CommandIndexProjection, create_schema, schema_for
from projections.metrics import ProjectionMetrics
from projections.runner import ProjectionRunner, RunnerConfig
from services.intake.index import PostgresCommandIndex

log = logging.getLogger(__name__)

INDEX_LINGER_SECONDS = 0.2  # a small batch waits this long to grow: ~10x fewer transactions


@dataclass
class HostedIndex:
    """The reader the intake uses, and what must be stopped on shutdown."""

    reader: PostgresCommandIndex
    runner: ProjectionRunner
    _pool: AsyncConnectionPool[Any]
    _stop: asyncio.Event
    _task: asyncio.Task[None]

    async def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 30)
        await self._pool.close()


async def _idle(stop: asyncio.Event) -> None:
    await stop.wait()


async def host_command_index(
    database_url: str,
    store: EventStore,
    streams: StreamNames,
    registry: CollectorRegistry,
    *,
    run_projection: bool = True,
) -> HostedIndex:
    """Create the index's schema if missing, start its runner and open the reader's pool."""
    schema = schema_for(streams.source)
    async with await psycopg.AsyncConnection.connect(database_url, connect_timeout=5) as conn:
        await create_schema(conn, schema)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=4,
        timeout=2.0,  # a lookup waits this long for a connection, then the command is UNAVAILABLE
        kwargs={"autocommit": True},
        open=False,
    )
    await pool.open(wait=True, timeout=10)
    projection = CommandIndexProjection(schema, streams)
    runner = ProjectionRunner(
        projection,
        store,
        database_url,
        ProjectionMetrics(registry),
        RunnerConfig(
            batch=1000,
            # Readers of the index wait for its position anyway; bigger transactions leave the
            # intake's event loop more time for commands (the index runs in its process).
            linger_seconds=INDEX_LINGER_SECONDS,
            holder=f"{socket.gethostname()}:{os.getpid()}",
        ),
    )
    stop = asyncio.Event()
    if run_projection:
        task = asyncio.create_task(runner.run(stop), name="command-index")
    else:
        task = asyncio.create_task(_idle(stop), name="command-index-off")

    def done(finished: asyncio.Task[Any]) -> None:
        if not finished.cancelled() and finished.exception() is not None:
            log.error("command index projection failed", exc_info=finished.exception())

    task.add_done_callback(done)
    return HostedIndex(PostgresCommandIndex(pool, schema, streams.source), runner, pool, stop, task)
