"""Adapters every service builds the same way from ``Settings`` (used by the composition roots)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import nats
from nats.aio.client import Client as NATS

from contracts.errors import InvalidArgument, Unavailable
from eventstore import EventStore, GroupCommitWriter
from services.security.config import nats_options
from services.settings import Settings

log = logging.getLogger("jetledger.nats")
FIRST_CONNECT_DEADLINE = 20.0  # seconds; a supervisor (k8s, `jetledger dev`) restarts us after it


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


class _QuietTlsClose(logging.Filter):
    """Drop asyncio's note that nats-py's protocol returns True from ``eof_received`` over TLS:
    harmless (the connection closes either way) and printed on every close of a secure client."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_QuietTlsClose())


async def _report(exc: Exception) -> None:
    log.warning("nats: %s", exc or type(exc).__name__)


async def connect_nats(settings: Settings, name: str, **options: Any) -> NATS:
    """Connect to ``JETLEDGER_NATS_URL`` as this process's NATS user (TLS + its certificate when
    security is on); a failure is ``Unavailable`` with one line."""
    if not settings.nats_url:
        raise InvalidArgument(
            "JETLEDGER_NATS_URL is required (`jetledger dev` starts a local NATS)"
        )
    options.setdefault("error_cb", _report)
    try:
        return await nats.connect(
            settings.nats_url, name=f"jetledger-{name}", **nats_options(settings), **options
        )
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        reason = str(exc) or "timed out"
        raise Unavailable(f"cannot connect to NATS at {settings.nats_url}: {reason}") from exc


async def connect_store(settings: Settings, name: str, *, writer: bool = False) -> Store:
    """Connect to NATS, provision the streams (idempotent), and build the store (and writer).

    With security on, a service holds no stream-admin rights: the streams were provisioned by the
    admin identity (``jetledger dev``, the provisioning job) before it started.
    """
    # Reconnect forever once connected (a NATS restart must not kill the service), but give the
    # first connection a deadline so a wrong URL is a clear error, not an endless retry.
    try:
        nc = await asyncio.wait_for(
            connect_nats(settings, name, max_reconnect_attempts=-1, connect_timeout=2),
            timeout=FIRST_CONNECT_DEADLINE,
        )
    except TimeoutError as exc:
        raise Unavailable(f"cannot connect to NATS at {settings.nats_url}: timed out") from exc
    store = EventStore(nc, settings.streams)
    if not settings.security:
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
