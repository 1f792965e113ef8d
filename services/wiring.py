"""Adapters every service builds the same way from ``Settings`` (used by the composition roots)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import nats
from nats.aio.client import Client as NATS
from psycopg.conninfo import make_conninfo

from contracts.errors import InvalidArgument, Unavailable
from eventstore import EventStore, GroupCommitWriter
from services.settings import Settings

log = logging.getLogger("jetledger.nats")
FIRST_CONNECT_DEADLINE = 20.0  # seconds; a supervisor (k8s, `jetledger dev`) restarts us after it
COMMAND_CONNECT_DEADLINE = 4.0  # seconds; a command says NATS is away well within 5 s


@dataclass
class Store:
    """A NATS connection, the event store on it and (for writers) the group-commit writer."""

    nc: NATS
    store: EventStore
    writer: GroupCommitWriter | None = None

    async def close(self) -> None:
        """Drain the writer, then the connection."""
        if self.writer is not None:
            await self.writer.close()
        await self.nc.drain()


async def connect_store(settings: Settings, name: str, *, writer: bool = False) -> Store:
    """Connect to NATS, provision the streams (idempotent), and build the store (and writer)."""
    if not settings.nats_url:
        raise InvalidArgument(
            "JETLEDGER_NATS_URL is required (`jetledger dev` starts a local NATS)"
        )

    async def report(exc: Exception) -> None:
        log.warning("nats: %s", exc or type(exc).__name__)

    try:
        # Reconnect forever once connected (a NATS restart must not kill the service), but give the
        # first connection a deadline so a wrong URL is a clear error, not an endless retry.
        nc = await asyncio.wait_for(
            nats.connect(
                settings.nats_url,
                name=f"jetledger-{name}",
                max_reconnect_attempts=-1,
                connect_timeout=2,
                error_cb=report,
            ),
            timeout=FIRST_CONNECT_DEADLINE,
        )
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        reason = str(exc) or "timed out"
        raise Unavailable(f"cannot connect to NATS at {settings.nats_url}: {reason}") from exc
    store = EventStore(nc, settings.streams)
    await store.ensure_streams(
        replicas=settings.stream_replicas,
        duplicate_window=timedelta(seconds=settings.duplicate_window_seconds),
    )
    built = Store(nc, store)
    if writer:
        built.writer = GroupCommitWriter(
            store, max_batch=settings.writer_max_batch, max_inflight=settings.writer_max_inflight
        )
    return built


async def _quiet(exc: Exception) -> None:
    del exc  # a command reports its own failure, in one line


@contextlib.asynccontextmanager
async def command_store(settings: Settings, name: str = "cli") -> AsyncIterator[EventStore]:
    """The event store for a one-shot command: fails fast, in one line, when NATS is away.

    No reconnect, a short connect timeout, no printed tracebacks from nats-py's callbacks: a
    command against an unreachable NATS must say so and exit within a few seconds.
    """
    if not settings.nats_url:
        raise InvalidArgument("set JETLEDGER_NATS_URL (or start `jetledger dev` first)")
    try:
        nc = await asyncio.wait_for(
            nats.connect(
                settings.nats_url,
                name=f"jetledger-{name}",
                connect_timeout=2,
                allow_reconnect=False,
                error_cb=_quiet,
            ),
            timeout=COMMAND_CONNECT_DEADLINE,
        )
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        reason = str(exc) or "timed out"
        raise Unavailable(f"cannot connect to NATS at {settings.nats_url}: {reason}") from None
    try:
        yield EventStore(nc, settings.streams)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def command_database_url(settings: Settings) -> str:
    """The Postgres URL for a one-shot command, with a connect timeout of a few seconds."""
    if not settings.database_url:
        raise InvalidArgument("set JETLEDGER_DATABASE_URL (or start `jetledger dev` first)")
    return make_conninfo(settings.database_url, connect_timeout=3)
