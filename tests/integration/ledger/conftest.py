"""Fixtures of the ledger projection tests: a fresh database and provisioned streams per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from contracts.subjects import StreamNames
from eventstore import EventStore
from tests.ledgerkit import fresh_database, nats_client


@pytest.fixture
async def ledger_db(database_url: str) -> AsyncIterator[str]:
    """A database of this test's own, migrated by whoever uses it first."""
    async with fresh_database(database_url) as url:
        yield url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    async with nats_client(nats_url) as client:
        yield client


@pytest.fixture
async def ledger_store(nc: NATS, streams: StreamNames) -> EventStore:
    """The event store on this test's source and derived streams, provisioned."""
    event_store = EventStore(nc, streams)
    await event_store.ensure_streams()
    return event_store


@pytest.fixture
async def js(nc: NATS, ledger_store: EventStore) -> JetStreamContext:
    """JetStream with this test's streams provisioned (for appending raw events)."""
    return nc.jetstream()
