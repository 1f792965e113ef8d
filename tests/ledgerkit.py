"""Test support for the ledger projection: streams, appends, fresh databases.

The valid event histories (``History``, ``busy_history``) live in ``bench.histories``, which the
benchmarks share; they are re-exported here.
"""

from __future__ import annotations

__all__ = [
    "T0",
    "History",
    "append",
    "append_raw",
    "append_with_markers",
    "busy_history",
    "create_source_stream",
    "fresh_database",
    "nats_client",
]

import contextlib
import uuid
from collections.abc import AsyncIterator

import nats
import nats.js.errors
import psycopg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.histories import T0, History, busy_history
from contracts.codec import encode
from contracts.events import (
    SourceEvent,
)
from contracts.subjects import StreamNames


async def create_source_stream(js: JetStreamContext, streams: StreamNames) -> None:
    """Create the test's source stream (as the event store provisions it)."""
    await js.add_stream(
        api.StreamConfig(
            name=streams.source,
            subjects=streams.subjects.source_stream_subjects(),
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.NEW,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
        )
    )


async def append(js: JetStreamContext, streams: StreamNames, events: list[SourceEvent]) -> int:
    """Append events to their card subjects (pipelined 500 at a time); return the last sequence."""
    import asyncio

    last = 0
    for start in range(0, len(events), 500):
        chunk = events[start : start + 500]
        acks = await asyncio.gather(
            *(
                js.publish(streams.subjects.card(e.card_id), encode(e), stream=streams.source)
                for e in chunk
            )
        )
        last = max(last, *(a.seq for a in acks))
    return last


async def append_raw(js: JetStreamContext, streams: StreamNames, subject: str, data: bytes) -> int:
    """Append raw bytes (e.g. a poison message) to the source stream; return its sequence."""
    ack = await js.publish(subject, data, stream=streams.source)
    return int(ack.seq)


@contextlib.asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[NATS]:
    """A connected NATS client, closed on exit."""
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """Create a database with a random name on the server; drop it (forcibly) afterwards."""
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"'.encode())
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)  # type: ignore[arg-type]
    finally:
        async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


async def append_with_markers(
    js: JetStreamContext, streams: StreamNames, appended: list[tuple[SourceEvent | None, str]]
) -> list[int]:
    """Append events and outcome-marker stand-ins (``command.<id>``) in order; return sequences."""
    import asyncio

    out: list[int] = []
    for start in range(0, len(appended), 500):
        chunk = appended[start : start + 500]
        acks = await asyncio.gather(
            *(
                js.publish(
                    streams.subjects.card(e.card_id)
                    if e is not None
                    else streams.subjects.command_marker(marker),
                    encode(e) if e is not None else b"{}",
                    stream=streams.source,
                )
                for e, marker in chunk
            )
        )
        out.extend(a.seq for a in acks)
    return out
