"""The relay publishes each entry exactly once, even after a crash between publish and record."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from nats.js import JetStreamContext

from contracts.codec import decode_entry
from contracts.subjects import StreamNames
from eventstore import EventStore
from projections.ledger.metrics import LedgerMetrics
from projections.ledger.relay import EntryRelay, relay_position
from tests.integration.ledger.harness import (
    running_projector,
    wait_for_position,
    wait_outbox_empty,
)
from tests.ledgerkit import append, busy_history

pytestmark = pytest.mark.timeout(60)


async def _published(store: EventStore) -> list[str]:
    names = store.names
    return [
        decode_entry(m.data).entry_id
        async for m in store.replay(1, [names.subjects.all_entries], stream=names.derived)
    ]


async def test_a_relay_that_crashed_before_recording_publishes_nothing_twice(
    ledger_db: str, js: JetStreamContext, ledger_store: EventStore, streams: StreamNames
) -> None:
    last = await append(js, streams, busy_history(cards=3, rounds=3).events)
    async with running_projector(ledger_db, ledger_store):
        await wait_for_position(ledger_db, streams.source, last)
        await wait_outbox_empty(ledger_db)
    before = await _published(ledger_store)
    assert len(before) == len(set(before)) > 0
    async with await psycopg.AsyncConnection.connect(ledger_db, autocommit=True) as conn:
        recorded = await relay_position(conn, streams.source)
        # the record of the last two rounds was lost (a crash right after their publish)
        await conn.execute(
            "UPDATE ledger_ops.relay_position SET last_sequence = 1, last_leg = 0,"
            " derived_sequence = 1"
        )
        # and a repair re-emitted an old entry meanwhile: it must not move the position back
        (head,) = [b async for b in ledger_store.replay_batches(0, stream=streams.derived, until=1)]
        first = head.messages[0]
        await js.publish(
            streams.subjects.entry_created("card-c0"), first.data, stream=streams.derived
        )
        relay = EntryRelay(ledger_db, ledger_store, LedgerMetrics(), asyncio.Event())
        await relay.reconcile(conn)
        assert relay.key == recorded[0]
        assert await relay.relay_once(conn) == 0
    after = await _published(ledger_store)
    assert after == [*before, before[0]]  # only the repair's copy, nothing from the relay
