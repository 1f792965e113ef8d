"""The live projector on real NATS and Postgres: entries, balances, outbox, verify."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from nats.js import JetStreamContext

from contracts.subjects import StreamNames
from eventstore import EventStore
from projections.ledger.metrics import LedgerMetrics
from projections.ledger.projection import LedgerProjection
from projections.ledger.verify import verify
from projections.metrics import ProjectionMetrics
from projections.runner import ProjectionRunner, RunnerConfig
from tests.integration.ledger.harness import (
    migrate,
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


@pytest.mark.parametrize("linger", [0.0, 2.0])
async def test_a_lingering_runner_applies_a_trickle_in_few_transactions(
    ledger_db: str,
    js: JetStreamContext,
    ledger_store: EventStore,
    streams: StreamNames,
    linger: float,
) -> None:
    """``linger_seconds``: a batch smaller than ``batch`` waits to grow, and is still applied."""
    await migrate(ledger_db)
    metrics = LedgerMetrics()
    runner = ProjectionRunner(
        LedgerProjection(ledger_db, ledger_store, metrics),
        ledger_store,
        ledger_db,
        ProjectionMetrics(metrics.registry),
        RunnerConfig(batch=500, linger_seconds=linger),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await asyncio.wait_for(runner.leading.wait(), 10)
        last = 0
        for event in busy_history(cards=2, rounds=2).events[:12]:
            last = await append(js, streams, [event])
            await asyncio.sleep(0.05)  # a trickle: each event alone on the stream for a moment
        await wait_for_position(ledger_db, streams.source, last)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    batches = metrics.registry.get_sample_value(
        "jetledger_projection_batches_total", {"projection": runner.projection.name}
    )
    assert batches is not None
    if linger:
        assert batches <= 2, f"{batches} transactions for a 12-event trickle"
    else:
        assert batches >= 6, f"without linger each event is applied as it comes ({batches})"
