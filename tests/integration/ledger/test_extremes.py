"""Balances at the extremes, property-based: amounts near 2^63−1, many times over.

Every leg fits int64 (one command bounds it), but a house or merchant account sums the legs of
every card, so its balance does not. Hypothesis drives fundings, purchases and refunds of
maximum-size amounts through the live projection and a rebuild: both must agree, agree with a
plain Python-int fold of the same history, balance to zero, and the derived stream must carry
every entry with its exact running balance.
"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.accounts import FUNDING, card_account, merchant_account
from contracts.codec import decode_entry
from contracts.subjects import StreamNames, Subjects
from eventstore import EventStore
from projections.ledger.rebuild import Rebuild, compare_schemas
from projections.ledger.verify import verify
from tests.conftest import unique_token
from tests.integration.ledger.harness import (
    running_projector,
    wait_for_position,
    wait_outbox_empty,
)
from tests.ledgerkit import History, append, fresh_database, nats_client

pytestmark = pytest.mark.timeout(120)

INT64_MAX = 2**63 - 1
amounts = st.one_of(
    st.just(INT64_MAX), st.integers(INT64_MAX - 1000, INT64_MAX), st.integers(1, INT64_MAX)
)
ops = st.lists(
    st.tuples(st.sampled_from(["fund", "buy", "refund"]), st.integers(0, 2), amounts),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history_ops=ops)
async def test_balances_beyond_int64_stay_exact_live_rebuilt_and_published(
    history_ops: list[tuple[str, int, int]], nats_url: str, database_url: str
) -> None:
    history = History()
    expected: dict[str, int] = {}

    def post(account: str, amount: int) -> None:
        expected[account] = expected.get(account, 0) + amount

    for n in range(3):
        history.issue(f"x{n}")
    for kind, n, amount in history_ops:
        card = f"x{n}"
        if kind == "fund":
            history.fund(card, amount)
            post(FUNDING, -amount)
            post(card_account(card), amount)
        elif kind == "buy" and history.purchase(card, "big", amount):
            post(card_account(card), -amount)
            post(merchant_account("big"), amount)
        elif kind == "refund" and any(left for _, _, left in history.refundable.values()):
            original = next(t for t, (_, _, left) in history.refundable.items() if left)
            refunded_card, _, before = history.refundable[original]
            history.refund(original, amount)
            refunded = before - history.refundable[original][2]
            post(merchant_account("big"), -refunded)
            post(card_account(refunded_card), refunded)
    token = unique_token()
    streams = StreamNames(f"X{token}", f"X{token}_DERIVED", Subjects(f"x{token}."))
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        store = EventStore(nc, streams)
        await store.ensure_streams()
        last = await append(nc.jetstream(), streams, history.events)
        async with running_projector(db, store, batch=4) as runner:
            await wait_for_position(db, streams.source, last)
            await wait_outbox_empty(db)
            assert runner.halted is None
        async with await psycopg.AsyncConnection.connect(db) as conn:
            cur = await conn.execute("SELECT account_id, posted FROM ledger.balances")
            posted = {account: int(value) for account, value in await cur.fetchall()}
            assert {a: v for a, v in posted.items() if v} == {
                a: v for a, v in expected.items() if v
            }
            assert sum(posted.values()) == 0
            shadow = await Rebuild(db, store, chunk=3).run(swap=False)
            diff = await compare_schemas(conn, "ledger", shadow.schema)
            assert all(d == (0, 0) for d in diff.values()), diff
            cur = await conn.execute(
                "SELECT stream_sequence, leg_index, balance_after FROM ledger.entries"
            )
            running = {(int(s), int(leg)): int(after) for s, leg, after in await cur.fetchall()}
        report = await verify(db, store, wait_seconds=2)
        assert report.ok, report.problems()
        published = {
            (entry.stream_sequence, int(entry.entry_id.rsplit(":", 1)[1])): entry.balance_after
            for entry in [
                decode_entry(m.data)
                async for m in store.replay(
                    1, [streams.subjects.all_entries], stream=streams.derived
                )
            ]
        }
        assert published == running
