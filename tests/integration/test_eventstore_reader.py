"""The reader's contract, on a real nats-server: every guarantee of ``eventstore.reader``.

- replays return exactly the messages up to their stop, in order, filtered here or on the server;
- a durable subscription starts where the caller says, whatever was acked before;
- a lost delivery, a redelivery, a deleted consumer or a killed server never skips a message: the
  reader re-anchors after the last message it handed out, and raises once its patience is spent;
- a replay never ends early and quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from contracts.errors import Unavailable
from contracts.subjects import StreamNames, Subjects
from eventstore import EventStore, OutgoingMessage, StoreUnavailable, Subscription
from eventstore.loop import run_loop
from eventstore.reader import read_batches
from services.localservers import LocalNats, free_port

pytestmark = pytest.mark.timeout(60)


def subject(store: EventStore, rest: str) -> str:
    return f"{store.names.subjects.prefix}{rest}"


async def fill(store: EventStore, rests: list[str]) -> list[int]:
    """Append one message per subject (batches of ≤ 1000); return their sequences."""
    out: list[int] = []
    for start in range(0, len(rests), 1000):
        chunk = rests[start : start + 1000]
        positions = await store.append_batch(
            [
                OutgoingMessage(subject(store, r), f"{start + i}".encode())
                for i, r in enumerate(chunk)
            ]
        )
        out += [p.sequence for p in positions]
    return out


async def drain(sub: Subscription, want: int, within: float = 20.0) -> list[int]:
    """Take batches (acking each) until ``want`` matching messages came; return their sequences."""
    seen: list[int] = []
    deadline = time.monotonic() + within
    while len(seen) < want:
        assert time.monotonic() < deadline, f"only {len(seen)} of {want} arrived"
        got = await sub.next_batch(100, 0.5)
        if got is not None:
            seen += [m.sequence for m in got.messages]
            sub.ack(got)
    return seen


async def test_replay_filters_here_or_on_the_server_and_stops_where_asked(
    store: EventStore,
) -> None:
    rests = [f"card.c{i % 5}" if i % 3 else f"command.k{i}" for i in range(2500)]
    seqs = await fill(store, rests)
    cards = [s for s, r in zip(seqs, rests, strict=True) if r.startswith("card.")]
    for server_filter in (False, True):
        got = [
            m.sequence
            async for m in store.replay(
                1, [store.names.subjects.all_cards], server_filter=server_filter
            )
        ]
        assert got == cards
    one = [s for s, r in zip(seqs, rests, strict=True) if r == "card.c1"]
    assert [m.sequence async for m in store.replay(1, [subject(store, "card.c1")])] == one
    # bounded by ``until``, and the batches say how far they covered (markers included)
    batches = [
        b async for b in store.replay_batches(100, [store.names.subjects.all_cards], until=2000,
                                              batch=128, server_filter=False)
    ]  # fmt: skip
    assert batches[-1].last_sequence == 2000
    assert [m.sequence for b in batches for m in b.messages] == [
        s for s in cards if 100 < s <= 2000
    ]
    assert all(len(b.messages) <= 128 for b in batches)
    # nothing after the end, nothing matching: an immediate, empty end
    assert [m async for m in store.replay(2501)] == []
    assert [m async for m in store.replay(1, [subject(store, "notify.>")])] == []


async def test_replay_messages_carry_headers_and_time(store: EventStore) -> None:
    await store.append(
        OutgoingMessage(subject(store, "card.c1"), b"x", headers={"traceparent": "00-ab"})
    )
    (message,) = [m async for m in store.replay()]
    assert message.headers["traceparent"] == "00-ab"
    assert message.time.tzinfo is not None
    assert abs(time.time() - message.time.timestamp()) < 60


async def test_replay_follows_live_appends(store: EventStore) -> None:
    await fill(store, ["card.c1"])
    received: list[int] = []

    async def read_three() -> None:
        async for message in store.replay(follow=True):
            received.append(message.sequence)
            if len(received) == 3:
                return

    reader = asyncio.create_task(read_three())
    await asyncio.sleep(0.3)
    await fill(store, ["card.c1", "card.c1"])
    await asyncio.wait_for(reader, 10)
    assert received == [1, 2, 3]


async def test_a_subscription_starts_at_the_callers_position_not_at_its_acks(
    store: EventStore,
) -> None:
    await fill(store, ["card.c1"] * 20)
    cards = [store.names.subjects.all_cards]
    sub = await store.subscribe("proj", 0, cards)
    assert await drain(sub, 20) == list(range(1, 21))  # all acked
    await sub.close()
    # the caller's tracking row says 5 (say, a rolled-back commit): it decides, not the acks
    sub = await store.subscribe("proj", 5, cards)
    assert await drain(sub, 15) == list(range(6, 21))
    await fill(store, ["command.k1", "card.c2"])
    # 21 is filtered out here, and may arrive alone: a batch of no messages at position 21
    got = await sub.next_batch(100, 5.0)
    assert got is not None
    seen = [m.sequence for m in got.messages]
    if got.last_sequence == 21:
        assert seen == []
        sub.ack(got)
        got = await sub.next_batch(100, 5.0)
        assert got is not None
        seen = [m.sequence for m in got.messages]
    assert seen == [22]
    assert got.last_sequence == 22
    assert await sub.next_batch(100, 0.3) is None  # idle: no batch, no error
    await sub.close()


async def test_acks_move_the_durable_consumers_ack_floor(
    store: EventStore, nats_conn: NATS
) -> None:
    await fill(store, ["card.c1"] * 10)
    sub = await store.subscribe("acked", 0, [store.names.subjects.all_cards])
    seen: list[int] = []
    while len(seen) < 4:  # a pull of 4 may be delivered in more than one batch
        got = await sub.next_batch(4 - len(seen), 5.0)
        assert got is not None
        seen += [m.sequence for m in got.messages]
        sub.ack(got)
    assert seen == [1, 2, 3, 4]
    await asyncio.sleep(0.2)
    info = await nats_conn.jetstream().consumer_info(store.names.source, "acked")
    assert info.ack_floor is not None and info.ack_floor.stream_seq == 4
    await sub.close()


async def test_a_stolen_delivery_is_a_gap_the_subscription_never_skips(
    store: EventStore, nats_conn: NATS
) -> None:
    """Another client pulls from the same durable: a consumer-sequence jump, then a re-anchor."""
    sub = await store.subscribe("shared", 0, [store.names.subjects.all_cards])
    await fill(store, ["card.c1"] * 5)
    assert await drain(sub, 5) == [1, 2, 3, 4, 5]
    thief = await nats_conn.jetstream().pull_subscribe_bind("shared", stream=store.names.source)
    steal = asyncio.create_task(thief.fetch(1, timeout=10))
    await asyncio.sleep(2.6)  # our idle pulls expire; the thief's is now first in line
    await fill(store, ["card.c1"])
    stolen = await steal
    assert [m.metadata.sequence.stream for m in stolen] == [6]
    await fill(store, ["card.c1"] * 3)
    assert await drain(sub, 4) == [6, 7, 8, 9]  # every one, in order, the stolen one included
    assert sub.reanchors >= 1
    await thief.unsubscribe()
    await sub.close()


async def test_a_redelivery_after_the_ack_wait_re_anchors_without_repeating(
    store: EventStore,
) -> None:
    await fill(store, ["card.c1"] * 3)
    sub = await store.subscribe(
        "slow", 0, [store.names.subjects.all_cards], ack_wait=timedelta(seconds=1)
    )
    got = await sub.next_batch(100, 5.0)
    assert got is not None and [m.sequence for m in got.messages] == [1, 2, 3]
    await asyncio.sleep(1.6)  # not acked: the server redelivers, which we must not hand out again
    await fill(store, ["card.c1"] * 2)
    assert await drain(sub, 2) == [4, 5]
    assert sub.reanchors >= 1
    await sub.close()


async def test_a_deleted_consumer_is_re_created_after_the_last_handed_out(
    store: EventStore, nats_conn: NATS
) -> None:
    await fill(store, ["card.c1"] * 4)
    sub = await store.subscribe("gone", 0, [store.names.subjects.all_cards])
    assert await drain(sub, 4) == [1, 2, 3, 4]
    await nats_conn.jetstream().delete_consumer(store.names.source, "gone")
    await fill(store, ["card.c1"] * 2)
    assert await drain(sub, 2) == [5, 6]
    assert sub.reanchors >= 1
    await sub.close()


async def _own_server(tmp_path: Path) -> LocalNats:
    return LocalNats(store_dir=tmp_path / "nats", server_name="jetledger-reader").start()


NAMES = StreamNames("READER", "READER_DERIVED", Subjects("r."))


async def test_kill_9_of_nats_server_mid_replay_and_mid_subscription(tmp_path: Path) -> None:
    server = await _own_server(tmp_path)
    try:
        nc = await nats.connect(server.url, connect_timeout=5, max_reconnect_attempts=-1)
        store = EventStore(nc, NAMES)
        await store.ensure_streams()
        total = 30_000
        await fill(store, [f"card.c{i % 100}" if i % 4 else f"command.k{i}" for i in range(total)])
        expected = [m.sequence async for m in store.replay(1, [NAMES.subjects.all_cards])]
        sub = await store.subscribe("live", 0, [NAMES.subjects.all_cards], batch=200)
        live: list[int] = []
        replayed: list[int] = []
        killed = asyncio.Event()

        async def replay() -> None:
            async for got in store.replay_batches(0, [NAMES.subjects.all_cards], batch=200,
                                                  server_filter=False):  # fmt: skip
                replayed.extend(m.sequence for m in got.messages)
                if len(replayed) > 3000 and not killed.is_set():
                    await killed.wait()  # mid-read: the kill lands while we hold a batch
                await asyncio.sleep(0)

        async def subscription() -> None:
            while len(live) < len(expected):
                got = await sub.next_batch(200, 1.0)
                if got is not None:
                    live.extend(m.sequence for m in got.messages)
                    sub.ack(got)
                    if len(live) > 3000 and not killed.is_set():
                        await killed.wait()

        tasks = [asyncio.create_task(replay()), asyncio.create_task(subscription())]
        while len(replayed) <= 3000 or len(live) <= 3000:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        server.kill()
        killed.set()
        await asyncio.sleep(0.5)
        server.start()  # same store, same port
        await asyncio.wait_for(asyncio.gather(*tasks), 40)
        assert replayed == expected
        assert live == expected
        await sub.close()
        await nc.close()
    finally:
        server.stop()


async def test_a_server_that_stays_away_makes_a_replay_raise_not_end(tmp_path: Path) -> None:
    server = await _own_server(tmp_path)
    try:
        nc = await nats.connect(server.url, connect_timeout=5)
        store = EventStore(nc, NAMES)
        await store.ensure_streams()
        await fill(store, ["card.c1"] * 5000)
        url = store.read_url
        await nc.close()
        seen = 0

        async def read() -> None:
            nonlocal seen
            async for got in read_batches(url, NAMES.source, 0, 5000, [], batch=100,
                                          heartbeat_seconds=0.2, max_reanchors=3):  # fmt: skip
                seen += len(got.messages)
                if seen >= 1000:
                    server.kill()

        with pytest.raises(StoreUnavailable):
            await read()
        assert 1000 <= seen < 5000
    finally:
        server.stop()


async def test_unreachable_nats_is_unavailable_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable):
        async for _ in read_batches(f"nats://127.0.0.1:{free_port()}", "X", 0, 10, []):
            pass
    assert time.monotonic() - started < 5


async def test_credentials_in_the_url_are_used(tmp_path: Path) -> None:
    server = LocalNats(
        store_dir=tmp_path / "nats",
        extra_config='authorization { user: "reader", password: "s3cret" }\n',
    ).start()
    try:
        url = f"nats://reader:s3cret@127.0.0.1:{server.port}"
        nc = await nats.connect(url, connect_timeout=5)
        store = EventStore(nc, NAMES)
        await store.ensure_streams()
        await fill(store, ["card.c1"] * 3)
        assert [m.sequence async for m in store.replay()] == [1, 2, 3]
        await nc.close()
        wrong = f"nats://reader:nope@127.0.0.1:{server.port}"
        with pytest.raises(StoreUnavailable):
            async for _ in read_batches(wrong, NAMES.source, 0, 3, []):
                pass
    finally:
        server.stop()


async def test_a_replay_read_in_a_worker_process_is_the_same_replay(store: EventStore) -> None:
    rests = [f"card.c{i % 3}" if i % 4 else f"command.k{i}" for i in range(2200)]
    await fill(store, rests)
    cards = [store.names.subjects.all_cards]

    async def read(in_worker: bool) -> list[tuple[int, str, bytes, int]]:
        return [
            (m.sequence, m.subject, m.data, m.time_ns)
            async for got in store.replay_batches(
                0, cards, server_filter=False, batch=300, in_worker=in_worker
            )
            for m in got.messages
        ]

    assert await read(True) == await read(False)
    # left early: the child goes away with the generator
    early = store.replay_batches(0, cards, server_filter=False, batch=100, in_worker=True)
    async with contextlib.aclosing(early) as batches:
        async for _ in batches:
            break


async def test_a_worker_reader_raises_what_the_reader_raises() -> None:
    from eventstore.workers import read_batches_in_worker

    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        async for _ in read_batches_in_worker(f"nats://127.0.0.1:{free_port()}", "X", 0, 10, []):
            pass
    assert time.monotonic() - started < 10


def test_the_reader_works_on_the_services_event_loop(nats_url: str, streams: StreamNames) -> None:
    """Services run on uvloop, whose transports are not ``asyncio.Transport`` subclasses (an
    assertion on that once kept every projection from reading)."""
    got: list[int] = []

    async def main() -> None:
        nc = await nats.connect(nats_url)
        try:
            store = EventStore(nc, streams)
            await store.ensure_streams()
            seqs = await fill(store, ["card.c1", "card.c2", "card.c1"])
            got.extend([m.sequence async for m in store.replay(1, [subject(store, "card.c1")])])
            assert got == [seqs[0], seqs[2]]
        finally:
            await nc.close()

    run_loop(main())
    assert len(got) == 2
