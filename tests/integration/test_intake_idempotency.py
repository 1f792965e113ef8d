"""Idempotency beyond a card's in-memory command log: the command index, and the stream above it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from commands.messages import CreateTransaction, FundCard, IssueCard
from contracts.errors import AlreadyExists, NotFound
from eventstore import EventStore, GroupCommitWriter
from services.commandindex import HostedIndex, host_command_index
from services.intake import CommandHandler
from services.intake.cards import CommandLog, Recorded


async def _index(database_url: str, store: EventStore, *, run: bool = True) -> HostedIndex:
    return await host_command_index(
        database_url, store, store.names, CollectorRegistry(), run_projection=run
    )


async def _caught_up(hosted: HostedIndex, store: EventStore) -> None:
    head = await store.last_sequence()
    give_up = time.monotonic() + 60
    while (await hosted.reader.find("no-such-id")).position < head:
        assert time.monotonic() < give_up, "the command index never caught up"
        await asyncio.sleep(0.05)


def _fund(command_id: str, card_id: str, amount: int) -> FundCard:
    return FundCard(command_id=command_id, card_id=card_id, amount=amount, currency="USD")


async def _busy_card(handler: CommandHandler, card_id: str, commands: int) -> list[str]:
    await handler.handle(
        IssueCard(
            command_id=f"issue-{card_id}",
            card_id=card_id,
            cardholder_name="A",
            card_type="debit",
            currency="USD",
            last4="4242",
        )
    )
    ids = [f"{card_id}-f{n}" for n in range(commands)]
    for command_id in ids:
        await handler.handle(_fund(command_id, card_id, 100))
    return ids


@pytest.mark.parametrize("indexed", [True, False], ids=["index", "stream-only"])
async def test_old_ids_replay_after_the_log_forgot_them(
    store: EventStore, database_url: str, indexed: bool
) -> None:
    hosted = await _index(database_url, store, run=indexed)
    try:
        async with GroupCommitWriter(store) as writer:
            handler = CommandHandler(store, writer, store.names, index=hosted.reader, recent=2)
            ids = await _busy_card(handler, "c1", 6)
            if indexed:
                await _caught_up(hosted, store)
            log = handler.cards.log("c1")
            assert log.get(ids[0]) is None and log.horizon > 0  # forgotten by the memory
            last = await store.last_sequence()
            again = await handler.handle(_fund(ids[0], "c1", 100))
            assert again.replayed and again.command_type == "fund_card"
            with pytest.raises(AlreadyExists, match="by a fund_card command"):
                await handler.handle(_fund(ids[1], "c1", 999))
            # A fresh process (empty memory) with a tiny log: still one answer per id.
            fresh = CommandHandler(store, writer, store.names, index=hosted.reader, recent=1)
            replay = await fresh.handle(_fund(ids[2], "c1", 100))
            assert replay.replayed and replay.stream_sequence == again.stream_sequence + 2
            assert await store.last_sequence() == last  # nothing appended by any retry
            new = await fresh.handle(_fund("c1-new", "c1", 100))
            assert not new.replayed and new.stream_sequence == last + 1
    finally:
        await hosted.close()


async def test_the_index_answers_reads_from_any_process(
    store: EventStore, database_url: str
) -> None:
    hosted = await _index(database_url, store)
    try:
        async with GroupCommitWriter(store) as writer:
            first = CommandHandler(store, writer, store.names, index=hosted.reader, recent=1)
            ids = await _busy_card(first, "c1", 3)
            await _busy_card(first, "c2", 2)
            with pytest.raises(AlreadyExists, match="on card 'c1'"):  # this process saw it
                await first.handle(
                    CreateTransaction(
                        command_id=ids[0], card_id="c2", merchant_id="m", amount=1, currency="USD"
                    )
                )
            await _caught_up(hosted, store)
            # Another process, which never saw c1: the index knows the id and its card.
            other = CommandHandler(store, writer, store.names, index=hosted.reader, recent=1)
            read = await other.outcome_of(ids[0])
            assert read.card_id == "c1" and not read.replayed and read.outcome == "accepted"
            assert read.command_type == "fund_card"
            with pytest.raises(NotFound):
                await other.outcome_of("never-sent")
    finally:
        await hosted.close()


def test_a_log_forgets_ids_into_a_filter_that_never_misses_one() -> None:
    log = CommandLog(capacity=4)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(3000):
        log.add(Recorded(f"id-{n}", "fund_card", "f", "c", "accepted", "", "", n + 1, at))
    assert log.horizon == 2996 and len(log) == 4
    assert not any(log.surely_absent(f"id-{n}") for n in range(2996))  # forgotten ones
    absent = sum(log.surely_absent(f"other-{n}") for n in range(3000))
    assert absent > 2700  # false positives only cost a lookup; they stay rare
    incomplete = CommandLog(capacity=4, horizon=10)
    assert not incomplete.surely_absent("anything")


async def test_cold_loads_start_from_a_snapshot_and_keep_every_answer(store: EventStore) -> None:
    async with GroupCommitWriter(store) as writer:
        first = CommandHandler(store, writer, store.names, recent=4, snapshot_every=10)
        ids = await _busy_card(first, "c1", 25)
        give_up = time.monotonic() + 30
        while first.cards.stats.snapshots_written < 2:
            assert time.monotonic() < give_up, "no snapshot was written"
            await asyncio.sleep(0.05)
        expected = await first.cards.current("c1")

        later = CommandHandler(store, writer, store.names, recent=4)
        assert await later.cards.current("c1") == expected
        stats = later.cards.stats
        assert stats.from_snapshot == 1 and stats.events_read < 10  # a bounded tail, not 26
        # The snapshot carried the command log: old ids replay, recent ones too, new ones append.
        for command_id in (ids[0], ids[12], ids[-1]):
            again = await later.handle(_fund(command_id, "c1", 100))
            assert again.replayed
        with pytest.raises(AlreadyExists):
            await later.handle(_fund(ids[3], "c1", 7))
        new = await later.handle(_fund("c1-after", "c1", 100))
        assert not new.replayed

        blind = CommandHandler(store, writer, store.names, snapshots=False)
        assert await blind.cards.current("c1") == await later.cards.current("c1")
        assert blind.cards.stats.events_read == 27
