"""Reads against a real nats-server: one aggregate, last by subject, the subject index.

Replays and subscriptions have their own contract tests: ``test_eventstore_reader.py``.
"""

from __future__ import annotations

import pytest

from eventstore import EventStore, OutgoingMessage
from eventstore.jetstream import READ_BATCH

pytestmark = pytest.mark.timeout(30)


def subject(store: EventStore, rest: str) -> str:
    return f"{store.names.subjects.prefix}{rest}"


async def fill(store: EventStore, subjects: list[str]) -> None:
    await store.append_batch([OutgoingMessage(s, f"{i}".encode()) for i, s in enumerate(subjects)])


async def test_load_returns_one_family_in_order_and_its_last_sequence(store: EventStore) -> None:
    await fill(
        store,
        [
            subject(store, "card.c1"),
            subject(store, "card.c2"),
            subject(store, "command.k1"),
            subject(store, "card.c1"),
            subject(store, "card.c10"),
            subject(store, "card.c1"),
        ],
    )
    family = store.names.subjects.card("c1")

    loaded = await store.load(family)
    assert [(m.sequence, m.subject) for m in loaded.messages] == [
        (1, subject(store, "card.c1")),
        (4, subject(store, "card.c1")),
        (6, subject(store, "card.c1")),
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

    empty = await store.load(store.names.subjects.card("nobody"))
    assert (empty.messages, empty.last_sequence) == ([], 0)


async def test_load_pages_through_a_long_family(store: EventStore) -> None:
    total = READ_BATCH * 2 + 17
    for start in range(0, total, 1000):
        await fill(store, [subject(store, "card.c1")] * min(1000, total - start))
    await store.append(OutgoingMessage(subject(store, "card.c2"), b"x"))

    loaded = await store.load(store.names.subjects.card("c1"))
    assert [m.sequence for m in loaded.messages] == list(range(1, total + 1))
    assert loaded.last_sequence == total


async def test_last_by_subject_reads_a_marker(store: EventStore) -> None:
    marker = store.names.subjects.command_marker("k1")
    assert await store.last_by_subject(marker) is None
    await fill(store, [marker, subject(store, "card.c1")])
    found = await store.last_by_subject(marker)
    assert found is not None
    assert (found.sequence, found.subject, found.data) == (1, marker, b"0")
    assert found.time.tzinfo is not None


async def test_subjects_lists_the_stream_subject_index(store: EventStore) -> None:
    await fill(
        store,
        [
            subject(store, "card.c1"),
            subject(store, "card.c2"),
            subject(store, "card.c1"),
        ],
    )
    found = await store.subjects(subject(store, "card.*"))
    assert sorted(found) == [subject(store, "card.c1"), subject(store, "card.c2")]
    assert await store.subjects(subject(store, "command.>")) == []
