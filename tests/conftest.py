"""Shared fixtures: one real nats-server and one real Postgres per test session.

Set ``JETLEDGER_NATS_URL`` / ``JETLEDGER_DATABASE_URL`` to run the suite against external servers.
Tests isolate themselves with unique stream names and subject prefixes (``streams`` fixture)
rather than by truncating anything.
"""

from __future__ import annotations

import os

# Before anything imports grpc: children are spawned while gRPC is live (see services/__init__.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from contracts.subjects import StreamNames, Subjects
from eventstore import EventStore
from services.localservers import Servers, local_or_external

# embedded tools read XDG_RUNTIME_DIR; an unset one only warns, but warnings are errors here.
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The session's NATS and Postgres (local processes unless the environment names servers)."""
    data_dir: Path = tmp_path_factory.mktemp("servers")
    with local_or_external(
        nats_url=os.environ.get("JETLEDGER_NATS_URL", ""),
        database_url=os.environ.get("JETLEDGER_DATABASE_URL", ""),
        data_dir=data_dir,
    ) as running:
        yield running


@pytest.fixture(scope="session")
def nats_url(servers: Servers) -> str:
    return servers.nats_url


@pytest.fixture(scope="session")
def database_url(servers: Servers) -> str:
    return servers.database_url


def unique_token() -> str:
    """A short random token usable in stream names, subject prefixes and ids."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def streams() -> StreamNames:
    """Stream names and a subject prefix that belong to this test alone."""
    token = unique_token()
    return StreamNames(
        source=f"T{token}",
        derived=f"T{token}_DERIVED",
        subjects=Subjects(f"t{token}."),
    )


@pytest.fixture
async def nats_conn(nats_url: str) -> AsyncIterator[NATS]:
    """A NATS connection of this test's own, closed afterwards."""
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=5)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def store(nats_conn: NATS, streams: StreamNames) -> EventStore:
    """An event store on this test's own (provisioned) streams."""
    event_store = EventStore(nats_conn, streams)
    await event_store.ensure_streams()
    return event_store
