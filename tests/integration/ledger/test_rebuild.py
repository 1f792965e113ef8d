"""Rebuild: a shadow replay equals the live tables, and the swap happens under live traffic."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from nats.js import JetStreamContext

from contracts.subjects import StreamNames
from eventstore import EventStore
from projections.ledger.rebuild import Rebuild, compare_schemas
from projections.ledger.verify import verify
from tests.integration.ledger.harness import (
    migrate,
    running_projector,
    wait_for_position,
    wait_outbox_empty,
)
from tests.ledgerkit import append, busy_history

pytestmark = pytest.mark.timeout(60)


async def test_shadow_rebuild_equals_live_and_never_reemits(
    ledger_db: str, js: JetStreamContext, ledger_store: EventStore, streams: StreamNames
) -> None:
    history = busy_history(cards=3, rounds=5)
    last = await append(js, streams, history.events)
    async with running_projector(ledger_db, ledger_store, batch=40):
        await wait_for_position(ledger_db, streams.source, last)
        await wait_outbox_empty(ledger_db)
    derived_before = (await js.stream_info(streams.derived)).state.messages
    result = await Rebuild(ledger_db, ledger_store, chunk=17).run(swap=False)
    async with await psycopg.AsyncConnection.connect(ledger_db) as conn:
        assert await compare_schemas(conn, "ledger", result.schema) == dict.fromkeys(
            ("entries", "balances", "transactions", "card_changes", "tracking"), (0, 0)
        )
    assert (await js.stream_info(streams.derived)).state.messages == derived_before


async def test_swap_while_projector_runs_under_traffic(
    ledger_db: str, js: JetStreamContext, ledger_store: EventStore, streams: StreamNames
) -> None:
    history = busy_history(cards=5, rounds=12)
    half = len(history.events) // 2
    await append(js, streams, history.events[:half])
    async with running_projector(ledger_db, ledger_store, batch=25) as projector:

        async def trickle() -> int:
            last = 0
            for start in range(half, len(history.events), 10):
                last = await append(js, streams, history.events[start : start + 10])
                await asyncio.sleep(0.01)
            return last

        writer = asyncio.create_task(trickle())
        result = await Rebuild(ledger_db, ledger_store, chunk=50).run()
        last = await writer
        await wait_for_position(ledger_db, streams.source, last)
        assert result.swapped
        assert projector.halted is None
    async with await psycopg.AsyncConnection.connect(ledger_db) as conn:
        report = await verify(ledger_db, ledger_store)
        assert report.ok, report.problems()
        assert report.position == last
        cur = await conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ledger_re%'")
        assert await cur.fetchall() == []  # no shadow or retired schema left behind


async def test_rebuild_of_an_empty_projection(
    ledger_db: str, js: JetStreamContext, ledger_store: EventStore, streams: StreamNames
) -> None:
    await migrate(ledger_db)
    history = busy_history(cards=2, rounds=2)
    last = await append(js, streams, history.events)
    result = await Rebuild(ledger_db, ledger_store).run()
    assert result.position == last
    assert (await verify(ledger_db, ledger_store, derived=False)).ok
