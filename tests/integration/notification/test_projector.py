"""Exactly-once notification rows on real NATS + Postgres: redelivery, duplicates, poison, replay."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from contracts.codec import UndecodableEvent, encode
from contracts.subjects import StreamNames
from projections.notifications.postgres import NotificationProjector
from projections.notifications.queries import tracked
from projections.notifications.rebuild import consumed, rebuild, verify
from projections.notifications.schema import create_schemas
from services.notification.jetstream import DurableConsumer, StoredMessage, replay
from tests.notifykit import (
    Events,
    append,
    create_streams,
    fresh_database,
    nats_client,
)

pytestmark = pytest.mark.timeout(60)
SCHEMA = "notify"


async def _rows(conn: psycopg.AsyncConnection[Any]) -> list[tuple[str, str]]:
    cur = await conn.execute(
        "SELECT notification_id, kind FROM notify.notifications ORDER BY stream, sequence, sub"
    )
    return [(str(a), str(b)) for a, b in await cur.fetchall()]


async def test_redelivery_and_duplicate_entries_create_each_notification_once(
    nats_url: str, database_url: str, streams: StreamNames
) -> None:
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        await create_streams(js, streams)
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
            projector = NotificationProjector(SCHEMA, streams.subjects, side_effects=True)
            source = await DurableConsumer.create(
                js, streams.source, "n", [streams.subjects.all_cards], ack_wait=1.0
            )
            first = await source.fetch(100, 2.0)
            assert len(first) == 5
            result = await projector.apply(conn, streams.source, [d.message for d in first])
            assert [n.kind for n in result.created] == [
                "funding",
                "purchase",
                "decline",
                "purchase",
                "low_balance",
            ]
            # Not acked: JetStream redelivers after ack_wait; the tracking row makes it a no-op.
            await asyncio.sleep(1.2)
            again = await source.fetch(100, 3.0)
            while len(again) < 5:  # redeliveries do not count as pending: they may come one a fetch
                again += await source.fetch(100, 3.0)
            assert [d.num_delivered for d in again] == [2] * 5
            replayed = await projector.apply(conn, streams.source, [d.message for d in again])
            assert replayed.created == [] and replayed.duplicates == 5
            for d in again:
                await d.ack()
            derived = await DurableConsumer.create(
                js, streams.derived, "n", [streams.subjects.all_entries]
            )
            entries = await derived.fetch(100, 2.0)
            assert len(entries) == 2
            got = await projector.apply(conn, streams.derived, [d.message for d in entries])
            assert [n.notification_id for n in got.created] == [f"entry:{entry.entry_id}"]
            rows = await _rows(conn)
            assert len(rows) == 6 == len({i for i, _ in rows})
            assert (await tracked(conn, SCHEMA))[streams.source] == seqs[-1]
            cur = await conn.execute("SELECT count(*) FROM notify_ops.deliveries")
            assert (await cur.fetchone()) == (0,)  # no endpoint configured: nothing to deliver

            async def reader(stream: str, filters: Any, start: int) -> Any:
                async for batch in replay(js, stream, filters, from_sequence=start):
                    yield batch

            assert await verify(conn, reader, streams, SCHEMA) == []
            report = await rebuild(conn, reader, streams, SCHEMA)
            assert report.notifications == 6
            assert await _rows(conn) == rows  # replay equals live
            assert [s for s, _ in consumed(streams)] == [streams.source, streams.derived]
            await source.close()
            await derived.close()


async def test_a_poison_message_changes_nothing_and_stops_the_batch(
    nats_url: str, database_url: str, streams: StreamNames
) -> None:
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        await create_streams(js, streams)
        card = Events("c2")
        await append(js, streams, card.issue(), card.fund(500))
        ack = await js.publish(
            f"{streams.subjects.prefix}card.c2.transaction.created",
            b"{not json",
            stream=streams.source,
        )
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            await create_schemas(conn, SCHEMA)
            projector = NotificationProjector(SCHEMA, streams.subjects, side_effects=True)
            batch: list[StoredMessage] = []
            async for messages in replay(js, streams.source, [streams.subjects.all_cards]):
                batch += messages
            assert batch[-1].sequence == ack.seq
            with pytest.raises(UndecodableEvent):
                await projector.apply(conn, streams.source, batch)
            assert await _rows(conn) == []
            assert await tracked(conn, SCHEMA) == {}
