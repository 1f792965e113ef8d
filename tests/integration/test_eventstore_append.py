"""Appends against a real nats-server: compare-and-set, atomic batches, permanent idempotency."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from eventstore import (
    DuplicateMessageId,
    EventStore,
    Expectation,
    InvalidBatch,
    OutgoingMessage,
    Position,
    WrongLastSequence,
)

pytestmark = pytest.mark.timeout(30)


def card(store: EventStore, card_id: str) -> str:
    """A card's one subject: every event of the card, and its compare-and-set subject."""
    return store.names.subjects.card(card_id)


def marker(store: EventStore, command_id: str) -> str:
    return store.names.subjects.command_marker(command_id)


def command_unit(
    store: EventStore, card_id: str, command_id: str, version: int, payload: bytes = b"{}"
) -> list[OutgoingMessage]:
    """A command as the intake writes it: the money event (family CAS) and its outcome marker."""
    return [
        OutgoingMessage(
            card(store, card_id),
            payload,
            expect=Expectation(card(store, card_id), version),
        ),
        OutgoingMessage(
            marker(store, command_id), payload, expect=Expectation(marker(store, command_id), 0)
        ),
    ]


async def count(store: EventStore) -> int:
    return await store.last_sequence()


async def test_append_returns_the_position_and_compare_and_set_detects_a_conflict(
    store: EventStore,
) -> None:
    issued = OutgoingMessage(card(store, "c1"), b"1", expect=Expectation(card(store, "c1"), 0))
    first = await store.append(issued)
    assert first == Position(store.names.source, 1)

    with pytest.raises(WrongLastSequence) as conflict:
        await store.append(issued)
    assert (conflict.value.expected, conflict.value.found) == (0, 1)
    assert conflict.value.err_code == 10071
    assert await count(store) == 1


async def test_a_family_check_sees_every_event_of_the_card(store: EventStore) -> None:
    await store.append(OutgoingMessage(card(store, "c1"), b"1"))
    loaded = await store.load(card(store, "c1"))
    # a freeze lands between the read and the purchase
    await store.append(OutgoingMessage(card(store, "c1"), b"2"))

    with pytest.raises(WrongLastSequence) as conflict:
        await store.append_batch(command_unit(store, "c1", "k1", loaded.last_sequence))
    assert conflict.value.found == 2
    # either check could have found 2: the server does not say which, the marker read does
    assert [e.subject_filter for e in conflict.value.candidates] == [
        card(store, "c1"),
        marker(store, "k1"),
    ]
    assert await count(store) == 2
    assert await store.last_by_subject(marker(store, "k1")) is None


async def test_an_atomic_batch_stores_everything_or_nothing(store: EventStore) -> None:
    await store.append(OutgoingMessage(card(store, "c2"), b"0"))
    good = [
        OutgoingMessage(card(store, "c1"), b"a", expect=Expectation(card(store, "c1"), 0)),
        OutgoingMessage(card(store, "c1"), b"b"),
        OutgoingMessage(marker(store, "k1"), b"m", expect=Expectation(marker(store, "k1"), 0)),
    ]
    positions = await store.append_batch(good)
    assert positions == [Position(store.names.source, s) for s in (2, 3, 4)]
    stored = (await store.load(card(store, "c1"))).messages
    assert [(m.sequence, m.subject, m.data) for m in stored] == [
        (2, good[0].subject, b"a"),
        (3, good[1].subject, b"b"),
    ]

    for failing_at in range(3):
        batch = [
            OutgoingMessage(card(store, "c3"), b"x"),
            OutgoingMessage(marker(store, "k2"), b"y"),
            OutgoingMessage(card(store, "c4"), b"z"),
        ]
        # message `failing_at` expects card c2 to be empty, but it holds sequence 1
        batch[failing_at] = OutgoingMessage(
            batch[failing_at].subject, b"!", expect=Expectation(card(store, "c2"), 0)
        )
        with pytest.raises(WrongLastSequence) as conflict:
            await store.append_batch(batch)
        assert conflict.value.found == 1
        assert await count(store) == 4  # nothing of the batch was stored


async def test_the_server_checks_a_batch_against_the_stream_before_it(store: EventStore) -> None:
    """Why ``check_batch`` exists: unchecked, a stale check behind a write in the same batch passes."""
    # a family of subjects under one wildcard check (the card events' first layout had this shape)
    family = f"{store.names.subjects.prefix}notify.card.c1"
    stale = [
        OutgoingMessage(f"{family}.frozen", b"freeze"),
        OutgoingMessage(f"{family}.purchase", b"purchase", expect=Expectation(f"{family}.>", 0)),
    ]
    with pytest.raises(InvalidBatch):
        await store.append_batch(stale)
    assert await count(store) == 0

    # What the server itself does with it (send_batch skips the client-side check):
    await store.send_batch(stale)
    assert await count(store) == 2


async def test_a_batch_over_the_server_limit_is_refused_before_sending(store: EventStore) -> None:
    many = [OutgoingMessage(card(store, "c1"), b"x")] * 1001
    with pytest.raises(InvalidBatch):
        await store.append_batch(many)
    assert len(await store.append_batch(many[:1000])) == 1000


async def test_a_duplicate_command_is_detected_inside_the_dedup_window(store: EventStore) -> None:
    unit = [
        OutgoingMessage(card(store, "c1"), b"1", msg_id="k1"),
        OutgoingMessage(marker(store, "k1"), b"m", expect=Expectation(marker(store, "k1"), 0)),
    ]
    first = await store.append_batch(unit)

    with pytest.raises(DuplicateMessageId):
        await store.append_batch(unit)
    # a single append with a known Msg-Id is acknowledged with the original position
    assert await store.append(unit[0]) == first[0]
    assert await count(store) == 2


async def test_a_duplicate_command_is_detected_after_the_dedup_window(store: EventStore) -> None:
    await store.ensure_streams(duplicate_window=timedelta(seconds=1))
    unit = [
        OutgoingMessage(card(store, "c1"), b"1", msg_id="k1"),
        OutgoingMessage(marker(store, "k1"), b"m", expect=Expectation(marker(store, "k1"), 0)),
    ]
    first = await store.append_batch(unit)
    await asyncio.sleep(1.5)  # the server has forgotten Msg-Id "k1"

    with pytest.raises(WrongLastSequence) as conflict:
        await store.append_batch(unit)
    # the marker still holds the original outcome, at the sequence the conflict names
    assert conflict.value.found == first[1].sequence
    original = await store.last_by_subject(marker(store, "k1"))
    assert original is not None
    assert (original.position, original.data) == (first[1], b"m")
    assert await count(store) == 2
