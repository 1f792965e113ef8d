"""Adapters built the same way everywhere from ``Settings``.

``connect_store`` is the services' (reconnects for ever once connected); ``connect_client`` is the
short-lived commands' (the CLI, the dev supervisor: fails fast, in one line). Both connect as this
process's NATS user, over TLS when security is on (``nats_options``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import nats
from nats.aio.client import Client as NATS
from psycopg.conninfo import make_conninfo

from contracts.errors import InvalidArgument, Unavailable
from eventstore import EventStore, GroupCommitWriter
from services.security.config import event_keyring, nats_options
from services.settings import Settings

log = logging.getLogger("jetledger.nats")
RECONNECT_WAIT_SECONDS: Final = 0.2  # between reconnect attempts (nats-py's default is 2 s)
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


def nats_servers(url: str) -> list[str]:
    """``JETLEDGER_NATS_URL`` may list several servers of one cluster, comma-separated: the client
    starts from any of them (a node that is down at start-up is then no obstacle)."""
    return [part.strip() for part in url.split(",") if part.strip()]


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
            nats_servers(settings.nats_url),
            name=f"jetledger-{name}",
            **nats_options(settings),
            **options,
        )
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        reason = str(exc) or "timed out"
        raise Unavailable(f"cannot connect to NATS at {settings.nats_url}: {reason}") from exc


async def connect_store(settings: Settings, name: str, *, writer: bool = False) -> Store:
    """Connect to NATS, check that the streams exist, and build the store (and writer).

    A service holds no stream-admin rights and creates nothing: the streams were provisioned
    before it started (``jetledger provision``: the Kubernetes Job, ``jetledger dev``).
    """
    # Reconnect forever once connected (a NATS restart must not kill the service), but give the
    # first connection a deadline so a wrong URL is a clear error, not an endless retry.
    try:
        nc = await asyncio.wait_for(
            connect_nats(
                settings,
                name,
                max_reconnect_attempts=-1,
                connect_timeout=2,
                # nats-py waits 2 s between attempts by default: a restarted server would stay
                # unused for seconds. Commands fail fast meanwhile (EventStore checks the link).
                reconnect_time_wait=RECONNECT_WAIT_SECONDS,
            ),
            timeout=FIRST_CONNECT_DEADLINE,
        )
    except TimeoutError as exc:
        raise Unavailable(f"cannot connect to NATS at {settings.nats_url}: timed out") from exc
    store = EventStore(nc, settings.streams, keyring=event_keyring(settings))
    # the intake (a writer) reads only the source stream, and may ask only about it
    needed = [settings.streams.source] if writer else None
    try:
        missing = await store.missing_streams(needed)
        if settings.streams.source not in missing:
            await store.refuse_legacy_layout()
    except BaseException:
        await nc.close()
        raise
    if missing:
        await nc.close()
        raise Unavailable(
            f"stream(s) {', '.join(missing)} do not exist: run `jetledger provision`"
            " (the jetledger-provision Job) before the services"
        )
    built = Store(nc, store)
    if writer:
        built.writer = GroupCommitWriter(
            store, max_batch=settings.writer_max_batch, max_inflight=settings.writer_max_inflight
        )
    return built


CLIENT_CONNECT_SECONDS: Final = 2.0  # a command facing an unreachable NATS gives up after this


async def connect_client(settings: Settings, name: str) -> NATS:
    """Connect a short-lived client (a CLI command, the dev supervisor): fail fast, never retry.

    A command whose NATS is down must say so in one line within seconds. nats-py's defaults would
    retry for about two minutes and print a traceback for every attempt, and even with
    ``allow_reconnect=False`` its first connect loops until ``max_reconnect_attempts`` is spent:
    so one retry at most, no wait between, a deadline on the whole, errors kept, not printed.
    Once connected, a lost connection ends the command (``ConnectionClosedError``) instead of
    hanging in a reconnect loop.
    """
    if not settings.nats_url:
        raise InvalidArgument("set JETLEDGER_NATS_URL (or start `jetledger dev` first)")
    seen: list[Exception] = []

    async def remember(exc: Exception) -> None:
        seen.append(exc)

    client = NATS()
    try:
        await asyncio.wait_for(
            client.connect(
                nats_servers(settings.nats_url),
                name=f"jetledger-{name}",
                connect_timeout=int(CLIENT_CONNECT_SECONDS),
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                error_cb=remember,
                **nats_options(settings),
            ),
            timeout=CLIENT_CONNECT_SECONDS + 1,
        )
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        # A failed first connect leaves its socket open (nats-py closes it only in close()).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), timeout=1)
        cause = seen[-1] if seen else exc
        raise Unavailable(
            f"cannot connect to NATS at {settings.nats_url}: {_connect_reason(cause)}"
        ) from exc
    return client


def _connect_reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"no answer within {CLIENT_CONNECT_SECONDS:.0f}s"
    return str(exc) or type(exc).__name__


@contextlib.asynccontextmanager
async def command_store(settings: Settings, name: str = "cli") -> AsyncIterator[EventStore]:
    """The event store of a one-shot command (``connect_client``: fails fast, in one line)."""
    nc = await connect_client(settings, name)
    try:
        yield EventStore(nc, settings.streams, keyring=event_keyring(settings))
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def command_database_url(settings: Settings) -> str:
    """The Postgres URL for a one-shot command, with a connect timeout of a few seconds."""
    if not settings.database_url:
        raise InvalidArgument("set JETLEDGER_DATABASE_URL (or start `jetledger dev` first)")
    return make_conninfo(settings.database_url, connect_timeout=2)
