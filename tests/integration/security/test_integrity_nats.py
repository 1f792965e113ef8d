"""Event MACs on a real nats-server: what the intake seals checks after the round trip through
JetStream (headers as stored), and what a raw publish puts on a card's subject does not."""

from __future__ import annotations

import os

import pytest
from nats.aio.client import Client as NATS

from contracts.subjects import StreamNames
from eventstore import EventStore, Expectation, OutgoingMessage, WrongLastSequence
from eventstore import headers as h
from eventstore.integrity import Keyring, Verdict, check_stored, seal

RING = Keyring("k1", {"k1": os.urandom(32)})


async def test_sealed_appends_check_and_raw_publishes_do_not(
    store: EventStore, nats_conn: NATS, streams: StreamNames
) -> None:
    subjects = streams.subjects
    funded = subjects.card("alice")
    family = subjects.card("alice")
    # The intake's way: sealed, with compare-and-set, alone and in an atomic batch.
    await store.append(
        seal(RING, OutgoingMessage(funded, b'{"amount":100}', expect=Expectation(family, 0)))
    )
    await store.append_batch(
        [
            seal(RING, OutgoingMessage(funded, b'{"amount":5}', expect=Expectation(family, 1))),
            seal(
                RING,
                OutgoingMessage(
                    subjects.command_marker("c-2"),
                    b"{}",
                    expect=Expectation(subjects.command_marker("c-2"), 0),
                ),
            ),
        ]
    )
    # A forger with publish rights (or none needed: permissions bypassed) writes straight to NATS.
    js = nats_conn.jetstream()
    await js.publish(funded, b'{"amount":1000000}', stream=streams.source)
    # A forger who copied a real event's MAC headers onto another payload.
    genuine = (await store.load(family)).messages[0]
    await js.publish(
        funded,
        b'{"amount":999}',
        headers={k: genuine.headers[k] for k in (h.MAC, h.MAC_KEY_ID)},
        stream=streams.source,
    )

    loaded = (await store.load(family)).messages
    verdicts = [check_stored(RING, m) for m in loaded]
    assert verdicts == [Verdict.VALID, Verdict.VALID, Verdict.MISSING, Verdict.MISMATCH]
    marker = await store.last_by_subject(subjects.command_marker("c-2"))
    assert marker is not None and check_stored(RING, marker) is Verdict.VALID


async def test_a_verbatim_replay_of_a_sealed_event_is_refused_by_the_server(
    store: EventStore, streams: StreamNames
) -> None:
    subjects = streams.subjects
    family = subjects.card("bob")
    event = seal(
        RING,
        OutgoingMessage(subjects.card("bob"), b'{"amount":7}', expect=Expectation(family, 0)),
    )
    await store.append(event)
    with pytest.raises(WrongLastSequence):
        await store.append(event)  # the same bytes and headers: its expectation is stale now
    assert len((await store.load(family)).messages) == 1
