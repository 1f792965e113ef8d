"""Exactly-once notification rows on real NATS + Postgres: duplicates, poison, replay, verify."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
import pytest
from nats.js import JetStreamContext

from contracts.codec import encode
from contracts.events import WebhookEndpointSet
from contracts.subjects import StreamNames
from eventstore import EventStore
from projections import tracking
from projections.model import Poison
from projections.notifications.rebuild import rebuild, verify
from projections.notifications.schema import create_schemas
from tests.notifykit import (
    Events,
    append,
    create_streams,
    fresh_database,
    nats_client,
    notification_runner,
)

pytestmark = pytest.mark.timeout(60)
SCHEMA = "notify"


async def _rows(conn: psycopg.AsyncConnection[Any]) -> list[tuple[str, str]]:
    cur = await conn.execute(
        "SELECT notification_id, kind FROM notify.notifications ORDER BY stream, sequence, sub"
    )
    return [(str(a), str(b)) for a, b in await cur.fetchall()]


async def _until(db: str, wanted: dict[str, int], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        while True:
            reached = await tracking.positions(conn, SCHEMA)
            if all(reached.get(s, 0) >= n for s, n in wanted.items()):
                return
            assert time.monotonic() < deadline, f"at {reached}, wanted {wanted}"
            await asyncio.sleep(0.05)


async def _project(store: EventStore, db: str, wanted: dict[str, int], linger: float = 0.0) -> None:
    """Run the live projection until it has applied ``wanted`` (stream -> sequence)."""
    runner = notification_runner(store, db, linger=linger)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await _until(db, wanted)
    finally:
        stop.set()
        await task


async def _until_halted(store: EventStore, db: str, linger: float = 0.0) -> list[Exception]:
    """Run the live projection until it stops on a poison message (10 s at most); what it
    reported through ``on_halt``."""
    halted: list[Exception] = []
    runner = notification_runner(store, db, linger=linger)
    runner.on_halt = halted.append
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        for _ in range(200):
            if halted:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    return halted


async def _purchase_after_an_endpoint(
    js: JetStreamContext, streams: StreamNames, db: str, merchant: str = "m-1"
) -> list[int]:
    """Issue and fund c1, set its webhook endpoint, then a purchase; create the schemas."""
    card = Events("c1")
    endpoint = WebhookEndpointSet(
        card_id="c1",
        command_id="hook-1",
        at=datetime.now(UTC),
        endpoint_id="e1",
        url="https://hooks.example.com/in",
        secret="s" * 32,
    )
    seqs = await append(js, streams, card.issue(), card.fund(10_000))
    ack = await js.publish(
        streams.subjects.notify_event("c1", endpoint), encode(endpoint), stream=streams.source
    )
    seqs += [ack.seq, *await append(js, streams, card.purchase(2_000, merchant))]
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        await create_schemas(conn, SCHEMA)
    return seqs


async def test_duplicate_entries_create_each_notification_once_and_replay_equals_live(
    nats_url: str, database_url: str, streams: StreamNames
) -> None:
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        await create_streams(js, streams)
        store = EventStore(nc, streams)
        card = Events("c1")
        purchase = card.purchase(2_000)
        seqs = await append(
            js,
            streams,
            card.issue(),
            card.fund(10_000),
            purchase,
            card.decline(50_000),
            card.purchase(7_500),
        )
        entry = card.entry(purchase, streams.source, seqs[2])
        # The outbox is at-least-once: the same entry can land twice (after the dedup window).
        for _ in range(2):
            await js.publish(
                streams.subjects.entry_created(entry.account_id),
                encode(entry),
                stream=streams.derived,
            )
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            await create_schemas(conn, SCHEMA)
        await _project(store, db, {streams.source: seqs[-1], streams.derived: 2})
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            rows = await _rows(conn)
            assert [kind for _, kind in rows] == [
                "funding", "purchase", "decline", "purchase", "low_balance", "posted",
            ]  # fmt: skip
            assert len({i for i, _ in rows}) == 6
            cur = await conn.execute("SELECT count(*) FROM notify_ops.deliveries")
            assert (await cur.fetchone()) == (0,)  # no endpoint configured: nothing to deliver
            assert await verify(conn, store, SCHEMA, wait_seconds=1) == []
            report = await rebuild(conn, store, SCHEMA)
            assert report.notifications == 6
            assert await _rows(conn) == rows  # replay equals live
            assert (await tracking.positions(conn, SCHEMA))[streams.source] == seqs[-1]


async def test_a_poison_message_stops_the_projection_after_its_good_prefix(
    nats_url: str, database_url: str, streams: StreamNames
) -> None:
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        await create_streams(js, streams)
        card = Events("c2")
        good = await append(js, streams, card.issue(), card.fund(500))
        await js.publish(
            streams.subjects.card("c2"),
            b"{not json",
            stream=streams.source,
        )
        await append(js, streams, card.purchase(100))
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            await create_schemas(conn, SCHEMA)
        halted = await _until_halted(EventStore(nc, streams), db)
        assert len(halted) == 1 and isinstance(halted[0], Poison)
        assert halted[0].message.sequence == good[-1] + 1
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            assert [kind for _, kind in await _rows(conn)] == ["funding"]  # never skipped
            assert (await tracking.positions(conn, SCHEMA))[streams.source] == good[-1]


async def _card_and_its_entries(
    js: JetStreamContext, streams: StreamNames, db: str, *, poison_entry: bool = False
) -> tuple[list[int], int]:
    """c3 issued, funded and a purchase on the source stream; the purchase's ledger entry on the
    derived stream, with (``poison_entry``) an undecodable message and one more entry after it.
    Returns the source sequences and the derived stream's last sequence."""
    card = Events("c3")
    purchase = card.purchase(1_000)
    seqs = await append(js, streams, card.issue(), card.fund(5_000), purchase)
    entry = card.entry(purchase, streams.source, seqs[-1])
    subject = streams.subjects.entry_created(entry.account_id)
    bodies = [encode(entry), b"{not json", encode(entry)] if poison_entry else [encode(entry)]
    for body in bodies:
        ack = await js.publish(subject, body, stream=streams.derived)
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        await create_schemas(conn, SCHEMA)
    return seqs, ack.seq


async def _tracking_rows(db: str) -> dict[str, tuple[int, datetime]]:
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        cur = await conn.execute("SELECT stream, last_sequence, updated_at FROM notify.tracking")
        return {stream: (last, at) for stream, last, at in await cur.fetchall()}


async def test_both_streams_waiting_batches_commit_in_one_transaction(
    nats_url: str, database_url: str, streams: StreamNames
) -> None:
    # While one stream's batch commits the other's waits: both are applied in the next
    # transaction, not one after the other (the derived stream's entries used to wait a commit).
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        await create_streams(js, streams)
        seqs, derived = await _card_and_its_entries(js, streams, db)
        # the linger lets both readers hand their batch over before the applier takes them
        wanted = {streams.source: seqs[-1], streams.derived: derived}
        await _project(EventStore(nc, streams), db, wanted, linger=1.0)
        rows = await _tracking_rows(db)
        assert rows[streams.source][0] == seqs[-1] and rows[streams.derived][0] == derived
        # now() is the transaction's start: the same on both rows only if one transaction wrote both
        assert rows[streams.source][1] == rows[streams.derived][1]


async def test_a_poison_entry_stops_the_projection_after_everything_before_it_in_both_streams(
    nats_url: str, database_url: str, streams: StreamNames
) -> None:
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        await create_streams(js, streams)
        seqs, _ = await _card_and_its_entries(js, streams, db, poison_entry=True)
        halted = await _until_halted(EventStore(nc, streams), db, linger=1.0)
        assert len(halted) == 1 and isinstance(halted[0], Poison)
        assert (halted[0].message.stream, halted[0].message.sequence) == (streams.derived, 2)
        rows = await _tracking_rows(db)
        # the source stream's batch whole, the derived stream's up to the poison message
        assert rows[streams.source][0] == seqs[-1] and rows[streams.derived][0] == 1
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            kinds = [kind for _, kind in await _rows(conn)]
        assert kinds == ["funding", "purchase", "posted"], kinds


async def test_a_webhook_gets_what_followed_its_endpoint_however_messages_are_batched(
    nats_url: str, database_url: str, streams: StreamNames
) -> None:
    # A rebuild (after a restore) reads everything in one batch: the funding that came before the
    # endpoint must not be delivered then either, as the live projection did not deliver it.
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        await create_streams(js, streams)
        store = EventStore(nc, streams)
        seqs = await _purchase_after_an_endpoint(js, streams, db)
        await _project(store, db, {streams.source: seqs[-1]})  # all stored: one batch
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT n.kind FROM notify_ops.deliveries d JOIN notify.notifications n"
                " USING (notification_id) ORDER BY n.sequence"
            )
            assert [kind for (kind,) in await cur.fetchall()] == ["purchase"]


async def test_text_that_needs_escaping_is_stored_and_queued_byte_for_byte(
    nats_url: str, database_url: str, streams: StreamNames
) -> None:
    # The write statement sends its arrays as binary parameters: quotes, backslashes, braces,
    # commas and non-ASCII inside JSON bodies must reach the rows exactly as encoded.
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        await create_streams(js, streams)
        store = EventStore(nc, streams)
        merchant = 'm "q" \\b {x,y} NULL é ✓'
        seqs = await _purchase_after_an_endpoint(js, streams, db, merchant)
        await _project(store, db, {streams.source: seqs[-1]})
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT n.body::text, d.body FROM notify.notifications n"
                " JOIN notify_ops.deliveries d USING (notification_id) WHERE n.kind = 'purchase'"
            )
            row = await cur.fetchone()
            assert row is not None
            stored = msgspec.json.decode(row[0])
            assert stored["merchant_id"] == merchant
            assert merchant in stored["message"]
            assert msgspec.json.decode(bytes(row[1])) == stored  # the POSTed bytes say the same
            cur = await conn.execute("SELECT state->>'last4' FROM notify.cards")
            assert await cur.fetchall() == [("4242",)]
