"""The transaction service's GetCard cache against the real card service (issue 10, defect 3).

Calls are counted where they land: the card service's own ``jetledger_card_lookups_served_total``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from contracts.errors import NotFound
from jetledger.transaction.v1 import transaction_pb2 as tx
from services.settings import Settings
from services.transaction.cardlookup import CardLookup
from tests.e2e.conftest import Intake, running_intake
from tests.e2e.support import issue_request, new_id, usd


def _served(intake: Intake) -> float:
    registry = intake.card_runtime.registry
    assert registry is not None
    return registry.get_sample_value("jetledger_card_lookups_served_total") or 0.0


async def _issue(intake: Intake, count: int) -> list[str]:
    ids = [new_id("card") for _ in range(count)]
    for card_id in ids:
        await intake.cards.IssueCard(issue_request(card_id))
    return ids


def _lookup(intake: Intake, registry: CollectorRegistry | None = None, **kwargs: Any) -> CardLookup:
    target = intake.settings.card_target
    channel = grpc.aio.insecure_channel(target)
    return CardLookup(target, channel=channel, registry=registry, **kwargs)


async def test_concurrent_lookups_of_one_card_make_one_call(intake: Intake) -> None:
    (card_id,) = await _issue(intake, 1)
    lookup = _lookup(intake)
    try:
        before = _served(intake)
        answers = await asyncio.gather(*(lookup.get(card_id) for _ in range(200)))
        assert {a.card_id for a in answers} == {card_id}
        assert _served(intake) - before == 1, "single flight: one GetCard for 200 callers"
    finally:
        await lookup.close()


async def test_expiring_entries_do_not_multiply_calls(intake: Intake) -> None:
    cards = await _issue(intake, 20)
    ttl, jitter, rounds, callers = 0.3, 0.5, 30, 10
    registry = CollectorRegistry()
    lookup = _lookup(intake, registry, ttl=ttl, jitter=jitter, max_stale=600.0)
    try:
        before = _served(intake)
        started = asyncio.get_running_loop().time()
        for _ in range(rounds):
            # Every card asked by many callers at once, round after round, across many expiries.
            answers = await asyncio.gather(
                *(lookup.get(card_id) for card_id in cards for _ in range(callers))
            )
            assert len(answers) == len(cards) * callers
            await asyncio.sleep(0.05)
        elapsed = asyncio.get_running_loop().time() - started
        await asyncio.sleep(0.2)  # let the last background refreshes land
        calls = _served(intake) - before
        waited = registry.get_sample_value("jetledger_card_lookups_total", {"answer": "waited"})
        # Only the first round (first sight of each card) waits for the card service; expiry never
        # makes anyone wait.
        assert waited == len(cards) * callers
        # At most one call per card per shortest freshness period (plus the first), whereas a
        # plain TTL cache makes `callers` calls per card at every expiry.
        bound = len(cards) * (1 + elapsed / (ttl * (1 - jitter)) + 1)
        assert len(cards) < calls <= bound, (calls, bound)
        assert calls < len(cards) * callers * rounds / 10
    finally:
        await lookup.close()


async def test_unknown_card_is_not_found_and_not_kept(intake: Intake) -> None:
    lookup = _lookup(intake)
    try:
        with pytest.raises(NotFound):
            await lookup.get(new_id("card"))
        assert len(lookup) == 0
    finally:
        await lookup.close()


async def test_budget_bounds_the_entries(intake: Intake) -> None:
    cards = await _issue(intake, 12)
    lookup = _lookup(intake, max_entries=5)
    try:
        for card_id in cards:
            await lookup.get(card_id)
        assert len(lookup) == 5
    finally:
        await lookup.close()


async def test_a_card_service_outage_is_ridden_out_on_kept_answers(intake: Intake) -> None:
    cards = await _issue(intake, 3)
    registry = CollectorRegistry()
    lookup = _lookup(intake, registry, ttl=0.2, jitter=0.0, max_stale=600.0)
    try:
        for card_id in cards:
            await lookup.get(card_id)
        await intake.card_runtime.stop(grace=0)  # the card service is gone
        await asyncio.sleep(0.3)  # every answer is past its freshness now
        for _ in range(50):
            answers = await asyncio.gather(*(lookup.get(c) for c in cards))
            assert [a.card_id for a in answers] == cards, "kept answers keep commands going"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        failed = registry.get_sample_value(
            "jetledger_card_lookup_calls_total", {"result": "failed"}
        )
        # One failed refresh per card, then one a second at most: not one per lookup (150).
        assert failed is not None and 3 <= failed <= 3 * 3, failed
    finally:
        await lookup.close()


async def test_a_card_the_intake_holds_is_not_looked_up_again(settings: Settings) -> None:
    """The lookup verifies a card before the intake first decides for it; after that the intake's
    own state of the card says it exists, however old the kept answer (a 100,000-card soak made
    one GetCard per command before)."""
    fleeting = dataclasses.replace(
        settings, card_lookup_ttl_seconds=0.05, card_lookup_max_stale_seconds=0.05
    )
    async with running_intake(fleeting) as intake:
        (card_id,) = await _issue(intake, 1)
        before = _served(intake)

        def purchase() -> tx.CreateTransactionRequest:
            return tx.CreateTransactionRequest(
                transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(10)
            )

        await intake.transactions.CreateTransaction(purchase())
        assert _served(intake) - before == 1  # the first decision for the card verifies it
        for _ in range(3):
            await asyncio.sleep(0.1)  # every kept answer is past max_stale now
            await intake.transactions.CreateTransaction(purchase())
            submitted = await intake.transactions.SubmitTransactions(
                tx.SubmitTransactionsRequest(
                    commands=[tx.TransactionCommand(create=purchase()) for _ in range(2)]
                )
            )
            assert [r.outcome.outcome for r in submitted.results] == [tx.OUTCOME_ACCEPTED] * 2
        assert _served(intake) - before == 1

        unknown = new_id("card")  # never issued: still NOT_FOUND, through the card service
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await intake.transactions.CreateTransaction(
                tx.CreateTransactionRequest(
                    transaction_id=new_id("t"), card_id=unknown, merchant_id="m", amount=usd(10)
                )
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
