"""Decisions in stream order: a card event that lands between a decision's read and its append
makes the decision start again (docs/architecture.md, invariant 6), through the real event store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import nats
import pytest
from prometheus_client import CollectorRegistry

from commands.messages import (
    CreateTransaction,
    FreezeCard,
    FundCard,
    IssueCard,
    UpdateCreditLimit,
)
from contracts.subjects import StreamNames
from eventstore import EventStore, GroupCommitWriter
from services.intake import CommandHandler, IntakeMetrics


class Replica:
    """One intake replica: its own connection, writer, cache and metrics."""

    def __init__(self, handler: CommandHandler, registry: CollectorRegistry) -> None:
        self.handler = handler
        self.registry = registry

    def conflicts(self) -> float:
        value = self.registry.get_sample_value("jetledger_command_conflicts_total")
        return 0.0 if value is None else value


@pytest.fixture
async def replicas(nats_url: str, streams: StreamNames) -> AsyncIterator[tuple[Replica, Replica]]:
    connections = [await nats.connect(nats_url) for _ in range(2)]
    made: list[Replica] = []
    writers: list[GroupCommitWriter] = []
    for nc in connections:
        store = EventStore(nc, streams)
        await store.ensure_streams(duplicate_window=timedelta(seconds=2))
        writer = GroupCommitWriter(store)
        writers.append(writer)
        registry = CollectorRegistry()
        made.append(
            Replica(
                CommandHandler(store, writer, streams, metrics=IntakeMetrics(registry)), registry
            )
        )
    yield made[0], made[1]
    for writer in writers:
        await writer.close()
    for nc in connections:
        await nc.close()


async def test_a_freeze_in_between_makes_the_purchase_decide_again(
    replicas: tuple[Replica, Replica],
) -> None:
    first, second = replicas
    await first.handler.handle(
        IssueCard(
            command_id="i1",
            card_id="c1",
            cardholder_name="A",
            card_type="prepaid",
            currency="EUR",
            last4="0001",
        )
    )
    await first.handler.handle(
        FundCard(command_id="f1", card_id="c1", amount=1_000, currency="EUR")
    )
    assert first.handler.cards.cached("c1").status == "active"

    # Another replica freezes the card; the first still believes it is active.
    await second.handler.handle(FreezeCard(command_id="fz1", card_id="c1", reason="stolen"))
    assert first.handler.cards.cached("c1").status == "active"

    outcome = await first.handler.handle(
        CreateTransaction(
            command_id="p1", card_id="c1", merchant_id="m", amount=100, currency="EUR"
        )
    )
    assert (outcome.outcome, outcome.reason) == ("declined", "card_frozen")
    assert first.conflicts() == 1, (
        "the stale decision was refused by compare-and-set, then re-decided"
    )


async def test_a_limit_cut_in_between_makes_the_purchase_decide_again(
    replicas: tuple[Replica, Replica],
) -> None:
    first, second = replicas
    await first.handler.handle(
        IssueCard(
            command_id="i2",
            card_id="c2",
            cardholder_name="B",
            card_type="credit",
            currency="USD",
            credit_limit=1_000,
            last4="0002",
        )
    )
    await first.handler.cards.current("c2")
    await second.handler.handle(UpdateCreditLimit(command_id="l2", card_id="c2", credit_limit=200))

    outcome = await first.handler.handle(
        CreateTransaction(
            command_id="p2", card_id="c2", merchant_id="m", amount=500, currency="USD"
        )
    )
    assert (outcome.outcome, outcome.reason) == ("declined", "insufficient_funds")
    assert first.conflicts() == 1
    state = await first.handler.cards.current("c2")
    assert (state.credit_limit, state.posted) == (200, 0)


async def test_retry_after_the_dedup_window_replays_the_original(
    replicas: tuple[Replica, Replica],
) -> None:
    import asyncio

    first, second = replicas
    await first.handler.handle(
        IssueCard(
            command_id="i3",
            card_id="c3",
            cardholder_name="C",
            card_type="credit",
            currency="USD",
            credit_limit=900,
            last4="0003",
        )
    )
    purchase = CreateTransaction(
        command_id="p3", card_id="c3", merchant_id="m", amount=400, currency="USD"
    )
    original = await first.handler.handle(purchase)
    await asyncio.sleep(2.5)  # past the stream's 2 s duplicate window: only the marker remembers
    again = await second.handler.handle(purchase)
    assert again.replayed and again.stream_sequence == original.stream_sequence
    state = await second.handler.cards.current("c3")
    assert state.posted == -400, "applied once"
