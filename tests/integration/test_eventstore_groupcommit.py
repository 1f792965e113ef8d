"""The group-commit writer on a real nats-server: nothing lost, nothing doubled, conflicts isolated."""

from __future__ import annotations

import asyncio

import pytest

from eventstore import (
    DuplicateMessageId,
    EventStore,
    Expectation,
    GroupCommitWriter,
    OutgoingMessage,
    Position,
    StoreError,
    WrongLastSequence,
)

pytestmark = pytest.mark.timeout(30)


def unit(
    store: EventStore, card_id: str, command_id: str, version: int, msg_id: str | None = None
) -> list[OutgoingMessage]:
    """One command: its event under the card's family check, and its outcome marker."""
    subjects = store.names.subjects
    marker = subjects.command_marker(command_id)
    return [
        OutgoingMessage(
            subjects.card(card_id),
            command_id.encode(),
            expect=Expectation(subjects.card(card_id), version),
            msg_id=msg_id,
        ),
        OutgoingMessage(marker, command_id.encode(), expect=Expectation(marker, 0)),
    ]


async def test_200_concurrent_appends_lose_none_and_double_none(store: EventStore) -> None:
    async with GroupCommitWriter(store, max_batch=100, max_inflight=4) as writer:
        results = await asyncio.gather(
            *(writer.submit(unit(store, f"c{i}", f"k{i}", 0)) for i in range(200))
        )
    positions = [p for result in results for p in result]
    assert len(positions) == 400
    assert len(set(positions)) == 400
    assert await store.last_sequence() == 400
    for i, result in enumerate(results):
        loaded = await store.load(store.names.subjects.card(f"c{i}"))
        assert [m.position for m in loaded.messages] == [result[0]]
        assert loaded.messages[0].data == f"k{i}".encode()
        marker = await store.last_by_subject(store.names.subjects.command_marker(f"k{i}"))
        assert marker is not None
        assert marker.position == result[1]
    assert writer.stats.units == 200
    assert writer.stats.batches < 200  # coalesced


async def test_one_conflicting_unit_fails_alone_and_the_rest_of_its_batch_commits(
    store: EventStore,
) -> None:
    taken = await store.append(OutgoingMessage(store.names.subjects.card("busy"), b"first"))
    writer = GroupCommitWriter(store, max_inflight=1)
    units = [unit(store, f"c{i}", f"k{i}", 0) for i in range(30)]
    units.insert(17, unit(store, "busy", "stale", 0))  # stale: the card holds `taken`

    results = await asyncio.gather(*(writer.submit(u) for u in units), return_exceptions=True)
    await writer.close()

    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1
    conflict = results[17]
    assert isinstance(conflict, WrongLastSequence)
    assert conflict.found == taken.sequence
    assert writer.stats.bisections > 0  # they did share a batch, and it was split
    assert await store.last_sequence() == 1 + 30 * 2
    assert await store.last_by_subject(store.names.subjects.command_marker("stale")) is None


async def test_two_commands_on_one_card_never_share_a_batch(store: EventStore) -> None:
    """Both expect the empty card; together the server would accept both (checks are pre-batch)."""
    writer = GroupCommitWriter(store)
    first, second = await asyncio.gather(
        writer.submit(unit(store, "c1", "k1", 0)),
        writer.submit(unit(store, "c1", "k2", 0)),
        return_exceptions=True,
    )
    await writer.close()
    assert isinstance(first, list)
    assert isinstance(second, WrongLastSequence)
    assert second.found == first[1].sequence or second.found == first[0].sequence
    assert len((await store.load(store.names.subjects.card("c1"))).messages) == 1


async def test_a_hot_card_admits_exactly_one_decision_per_version(store: EventStore) -> None:
    writer = GroupCommitWriter(store)
    results = await asyncio.gather(
        *(writer.submit(unit(store, f"c{i % 10}", f"k{i}", 0)) for i in range(200)),
        return_exceptions=True,
    )
    await writer.close()
    ok = [r for r in results if isinstance(r, list)]
    assert len(ok) == 10
    assert all(isinstance(r, WrongLastSequence) for r in results if not isinstance(r, list))
    assert await store.last_sequence() == 20
    # most losers were known stale from the winners' positions: no batch spent on them
    assert writer.stats.stale_failed_early > 100


async def test_a_duplicate_msg_id_fails_only_its_unit(store: EventStore) -> None:
    await store.append_batch(unit(store, "c0", "k0", 0, msg_id="dup"))
    writer = GroupCommitWriter(store, max_inflight=1)
    units = [unit(store, f"c{i}", f"k{i}", 0, msg_id=f"m{i}") for i in range(1, 9)]
    units.append(unit(store, "c9", "k9", 0, msg_id="dup"))
    results = await asyncio.gather(*(writer.submit(u) for u in units), return_exceptions=True)
    await writer.close()
    assert isinstance(results[-1], DuplicateMessageId)
    assert all(isinstance(r, list) for r in results[:-1])
    assert await store.last_sequence() == 2 + 8 * 2


async def test_close_drains_and_then_refuses(store: EventStore) -> None:
    writer = GroupCommitWriter(store, max_batch=10, max_inflight=2)
    pending = [
        asyncio.create_task(writer.submit(unit(store, f"c{i}", f"k{i}", 0))) for i in range(50)
    ]
    await asyncio.sleep(0)
    await writer.close()
    assert all(task.done() for task in pending)
    assert {len(task.result()) for task in pending} == {2}
    with pytest.raises(StoreError):
        await writer.submit(unit(store, "late", "late", 0))


async def test_a_lone_command_is_sent_without_waiting_for_company(store: EventStore) -> None:
    writer = GroupCommitWriter(store)
    loop = asyncio.get_running_loop()
    started = loop.time()
    positions = await writer.submit(unit(store, "c1", "k1", 0))
    elapsed = loop.time() - started
    await writer.close()
    assert positions == [Position(store.names.source, 1), Position(store.names.source, 2)]
    assert elapsed < 0.5
