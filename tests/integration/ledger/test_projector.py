"""The live projector on real NATS and Postgres: entries, balances, outbox, verify."""

from __future__ import annotations

import psycopg
import pytest
from nats.js import JetStreamContext

from contracts.subjects import StreamNames
from eventstore import EventStore
from projections.ledger.verify import verify
from tests.integration.ledger.harness import (
    running_projector,
    wait_for_position,
    wait_outbox_empty,
)
from tests.ledgerkit import append, busy_history

pytestmark = pytest.mark.timeout(60)


async def test_projects_history_and_matches_independent_fold(
    ledger_db: str, js: JetStreamContext, ledger_store: EventStore, streams: StreamNames
) -> None:
    history = busy_history(cards=4, rounds=6)
    last = await append(js, streams, history.events)
    async with running_projector(ledger_db, ledger_store, batch=50):
        await wait_for_position(ledger_db, streams.source, last)
        await wait_outbox_empty(ledger_db)
    async with await psycopg.AsyncConnection.connect(ledger_db) as conn:
        report = await verify(ledger_db, ledger_store)
        assert report.ok, report.differences
        cur = await conn.execute("SELECT count(*), sum(amount) FROM ledger.entries")
        count, total = await cur.fetchone()  # type: ignore[misc]
    assert total == 0
    derived = await js.stream_info(streams.derived)
    assert derived.state.messages == count
