"""Fixtures of the ledger projection tests: a fresh database and a source stream per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from contracts.subjects import StreamNames
from tests.ledgerkit import create_source_stream, fresh_database, nats_client


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
async def js(nc: NATS, streams: StreamNames) -> JetStreamContext:
    """JetStream with this test's source stream created."""
    context = nc.jetstream()
    await create_source_stream(context, streams)
    return context
