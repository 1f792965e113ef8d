"""Replay equals live (docs/architecture.md, invariant 9), property-based: hypothesis histories, decided by the pure core
and by the real intake (compare-and-set, outcome markers, group commit), are projected live, rebuilt from sequence 0, and folded independently — all must agree, agree with
the pure model's card states, and every currency must sum to zero."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings

from contracts.accounts import card_account
from contracts.subjects import StreamNames, Subjects
from eventstore import EventStore, GroupCommitWriter
from projections.ledger.rebuild import Rebuild, compare_schemas
from projections.ledger.verify import verify
from services.intake import CommandHandler
from tests.conftest import unique_token
from tests.integration.ledger.commandgen import ops, run_ops, run_ops_through_intake
from tests.integration.ledger.harness import running_projector, wait_for_position
from tests.ledgerkit import (
    T0,
    append_with_markers,
    fresh_database,
    nats_client,
)

pytestmark = pytest.mark.timeout(90)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=ops)
async def test_live_equals_rebuilt_equals_pure_model(
    history: list[tuple[str, str, int, int]], nats_url: str, database_url: str
) -> None:
    run = run_ops(history)
    token = unique_token()
    streams = StreamNames(f"H{token}", f"H{token}_DERIVED", Subjects(f"h{token}."))
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        store = EventStore(nc, streams)
        await store.ensure_streams()
        seqs = await append_with_markers(js, streams, run.appended)
        last_event = max(s for s, (e, _) in zip(seqs, run.appended, strict=True) if e is not None)
        async with running_projector(db, store, batch=7):
            await wait_for_position(db, streams.source, last_event)
        shadow = await Rebuild(db, store, chunk=5).run(swap=False)
        async with await psycopg.AsyncConnection.connect(db) as conn:
            diff = await compare_schemas(conn, "ledger", shadow.schema)
            assert all(d == (0, 0) for d in diff.values()), diff
            report = await verify(db, store, derived=False)
            assert report.ok, (report.differences, report.stream_totals, report.table_totals)
            cur = await conn.execute(
                "SELECT currency, sum(posted) FROM ledger.balances GROUP BY currency"
            )
            assert all(total == 0 for _, total in await cur.fetchall())
            for card, state in run.states.items():
                cur = await conn.execute(
                    "SELECT posted, pending, credit_limit, available FROM ledger.balances"
                    " WHERE account_id = %s",
                    (card_account(card),),
                )
                pending = sum(h.remaining for h in state.holds.values())
                expected = (
                    state.posted,
                    pending,
                    state.credit_limit,
                    state.posted + state.credit_limit - pending,
                )
                assert await cur.fetchone() == expected, card


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=ops)
async def test_histories_through_the_real_intake_replay_equal_live(
    history: list[tuple[str, str, int, int]], nats_url: str, database_url: str
) -> None:
    """The same property, with every command decided and appended by the real intake."""
    token = unique_token()
    streams = StreamNames(f"I{token}", f"I{token}_DERIVED", Subjects(f"i{token}."))
    clock = [T0]
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        store = EventStore(nc, streams)
        await store.ensure_streams()
        async with GroupCommitWriter(store) as writer:
            handler = CommandHandler(store, writer, streams, clock=lambda: clock[0])
            states = await run_ops_through_intake(history, handler, clock)
        async with running_projector(db, store, batch=7):
            await wait_for_position(db, streams.source, max(s.version for s in states.values()))
        shadow = await Rebuild(db, store, chunk=5).run(swap=False)
        async with await psycopg.AsyncConnection.connect(db) as conn:
            diff = await compare_schemas(conn, "ledger", shadow.schema)
            assert all(d == (0, 0) for d in diff.values()), diff
            report = await verify(db, store, derived=False)
            assert report.ok, (report.differences, report.stream_totals, report.table_totals)
            cur = await conn.execute(
                "SELECT currency, sum(posted) FROM ledger.balances GROUP BY currency"
            )
            assert all(total == 0 for _, total in await cur.fetchall())
            for card, state in states.items():
                cur = await conn.execute(
                    "SELECT posted, pending, available FROM ledger.balances WHERE account_id = %s",
                    (card_account(card),),
                )
                pending = sum(h.remaining for h in state.holds.values())
                assert await cur.fetchone() == (
                    state.posted,
                    pending,
                    state.posted + state.credit_limit - pending,
                ), card
