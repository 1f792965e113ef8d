"""Reads against a real nats-server: one aggregate, last by subject, replay, durable consumers."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from eventstore import EventStore, OutgoingMessage, StoredMessage
from eventstore.jetstream import READ_BATCH

pytestmark = pytest.mark.timeout(30)


def subject(store: EventStore, rest: str) -> str:
    return f"{store.names.subjects.prefix}{rest}"


async def fill(store: EventStore, subjects: list[str]) -> None:
    await store.append_batch([OutgoingMessage(s, f"{i}".encode()) for i, s in enumerate(subjects)])


async def collect(messages: object) -> list[StoredMessage]:
    assert hasattr(messages, "__aiter__")
    return [m async for m in messages]


async def test_load_returns_one_family_in_order_and_its_last_sequence(store: EventStore) -> None:
    await fill(
        store,
        [
            subject(store, "card.c1.issued"),
            subject(store, "card.c2.issued"),
            subject(store, "command.k1"),
            subject(store, "card.c1.transaction.created"),
            subject(store, "card.c10.issued"),
            subject(store, "card.c1.frozen"),
        ],
    )
    family = store.names.subjects.card_family("c1")

    loaded = await store.load(family)
    assert [(m.sequence, m.subject) for m in loaded.messages] == [
        (1, subject(store, "card.c1.issued")),
        (4, subject(store, "card.c1.transaction.created")),
        (6, subject(store, "card.c1.frozen")),
    ]
    assert loaded.last_sequence == 6
    assert loaded.messages[0].data == b"0"
    assert loaded.messages[0].stream == store.names.source

    tail = await store.load(family, after_sequence=1)
    assert [m.sequence for m in tail.messages] == [4, 6]
    assert tail.last_sequence == 6

    nothing_new = await store.load(family, after_sequence=6)
    assert (nothing_new.messages, nothing_new.last_sequence) == ([], 6)
    # a caller's stale or foreign number does not fool the CAS base
    beyond = await store.load(family, after_sequence=100)
    assert (beyond.messages, beyond.last_sequence) == ([], 6)

    empty = await store.load(store.names.subjects.card_family("nobody"))
    assert (empty.messages, empty.last_sequence) == ([], 0)


async def test_load_pages_through_a_long_family(store: EventStore) -> None:
    total = READ_BATCH * 2 + 17
    for start in range(0, total, 1000):
        await fill(store, [subject(store, "card.c1.funded")] * min(1000, total - start))
    await store.append(OutgoingMessage(subject(store, "card.c2.issued"), b"x"))

    loaded = await store.load(store.names.subjects.card_family("c1"))
    assert [m.sequence for m in loaded.messages] == list(range(1, total + 1))
    assert loaded.last_sequence == total


async def test_last_by_subject_reads_a_marker(store: EventStore) -> None:
    marker = store.names.subjects.command_marker("k1")
    assert await store.last_by_subject(marker) is None
    await fill(store, [marker, subject(store, "card.c1.issued")])
    found = await store.last_by_subject(marker)
    assert found is not None
    assert (found.sequence, found.subject, found.data) == (1, marker, b"0")
    assert found.time.tzinfo is not None


async def test_replay_returns_every_event_in_order(store: EventStore) -> None:
    subjects = [subject(store, f"card.c{i % 7}.funded") for i in range(1200)]
    subjects[5] = subject(store, "command.k1")
    for start in range(0, len(subjects), 1000):
        await fill(store, subjects[start : start + 1000])

    everything = await collect(store.replay(batch=256))
    assert [m.sequence for m in everything] == list(range(1, 1201))
    assert [m.subject for m in everything] == subjects

    tail = await collect(store.replay(1190))
    assert [m.sequence for m in tail] == list(range(1190, 1201))

    only = [subject(store, "card.c1.>"), subject(store, "command.>")]
    filtered = await collect(store.replay(1, only))
    assert [m.sequence for m in filtered] == [
        i + 1 for i, s in enumerate(subjects) if s.endswith("command.k1") or ".c1." in s
    ]
    assert await collect(store.replay(1201)) == []


async def test_replay_stops_at_the_last_sequence_of_the_call(store: EventStore) -> None:
    await fill(store, [subject(store, "card.c1.funded")] * 10)
    seen: list[int] = []
    async for message in store.replay(batch=3):
        seen.append(message.sequence)
        # appended while replaying: after the end the call saw
        await store.append(OutgoingMessage(subject(store, "card.c1.funded"), b"late"))
    assert seen == list(range(1, 11))


async def test_replay_on_an_empty_stream_or_filter_ends_at_once(store: EventStore) -> None:
    assert await collect(store.replay()) == []
    await fill(store, [subject(store, "card.c1.funded")])
    assert await collect(store.replay(1, [subject(store, "command.>")])) == []


async def test_replay_can_follow_live_appends(store: EventStore) -> None:
    await fill(store, [subject(store, "card.c1.funded")])
    follower = store.replay(follow=True)
    received: list[int] = []

    async def read_three() -> None:
        async for message in follower:
            received.append(message.sequence)
            if len(received) == 3:
                break

    reader = asyncio.create_task(read_three())
    await asyncio.sleep(0.2)
    await fill(store, [subject(store, "card.c1.funded")] * 2)
    await asyncio.wait_for(reader, 10)
    assert received == [1, 2, 3]


async def test_a_durable_consumer_redelivers_until_acked_and_bounds_redelivery(
    store: EventStore,
) -> None:
    await fill(
        store,
        [
            subject(store, "card.c1.issued"),
            subject(store, "command.k1"),
            subject(store, "card.c1.transaction.created"),
            subject(store, "notify.default.preferences_set"),
        ],
    )
    consumer = await store.durable_consumer(
        "projection",
        [store.names.subjects.all_cards, store.names.subjects.all_notify],
        ack_wait=timedelta(seconds=1),
        max_deliver=2,
    )
    first = await consumer.fetch(10, timeout=2)
    assert [d.message.sequence for d in first] == [1, 3, 4]
    assert all(d.num_delivered == 1 for d in first)
    await first[0].ack()
    await first[1].nak()
    await first[2].term()

    again = await consumer.fetch(10, timeout=2)
    assert [(d.message.sequence, d.num_delivered) for d in again] == [(3, 2)]
    # not acked, and max_deliver=2 is spent: never delivered again
    assert await consumer.fetch(10, timeout=1.5) == []

    # the same durable, bound again, keeps its progress
    await consumer.close()
    rebound = await store.durable_consumer(
        "projection",
        [store.names.subjects.all_cards, store.names.subjects.all_notify],
        ack_wait=timedelta(seconds=1),
        max_deliver=2,
    )
    await store.append(OutgoingMessage(subject(store, "card.c2.issued"), b"new"))
    fresh = await rebound.fetch(10, timeout=2)
    assert [d.message.sequence for d in fresh] == [5]
    assert fresh[0].message.data == b"new"
    await fresh[0].ack()
    assert await rebound.num_pending() == 0
    await rebound.delete()


async def test_subjects_lists_the_stream_subject_index(store: EventStore) -> None:
    await fill(
        store,
        [
            subject(store, "card.c1.issued"),
            subject(store, "card.c2.issued"),
            subject(store, "card.c1.frozen"),
        ],
    )
    found = await store.subjects(subject(store, "card.*.issued"))
    assert sorted(found) == [subject(store, "card.c1.issued"), subject(store, "card.c2.issued")]
    assert await store.subjects(subject(store, "command.>")) == []
