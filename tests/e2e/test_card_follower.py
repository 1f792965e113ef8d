"""GetCard answers from card states followed live from the stream (issue 16).

Exact and read-your-writes right after each command; the exact tail read is only a fallback (a
card pushed out by the budget, or a follower that is behind).
"""

from __future__ import annotations

import msgspec

from jetledger.card.v1 import card_pb2
from jetledger.transaction.v1 import transaction_pb2 as tx
from services.card.live import LiveCards
from services.intake.cards import CardStates, state_bytes
from services.wiring import connect_store
from tests.e2e.conftest import Intake
from tests.e2e.support import issue_request, new_id, usd


def _metric(intake: Intake, name: str) -> float:
    registry = intake.card_runtime.registry
    assert registry is not None
    return registry.get_sample_value(name) or 0.0


async def _spend(intake: Intake, card_id: str, amount: int) -> None:
    await intake.transactions.CreateTransaction(
        tx.CreateTransactionRequest(
            transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(amount)
        ),
        timeout=30,
    )


async def test_get_card_reads_its_writes_from_the_followed_state(intake: Intake) -> None:
    cards = [new_id("card") for _ in range(4)]
    for card_id in cards:
        await intake.cards.IssueCard(issue_request(card_id, credit_limit=10**9))
    spent = dict.fromkeys(cards, 0)
    for round_ in range(10):
        for index, card_id in enumerate(cards):
            amount = 1 + round_ + index
            await _spend(intake, card_id, amount)
            spent[card_id] += amount
            card = await intake.cards.GetCard(card_pb2.CardRequest(card_id=card_id), timeout=30)
            assert card.posted == -spent[card_id], "exact right after the command"
    served = _metric(intake, "jetledger_card_lookups_served_total")
    tail_reads = _metric(intake, "jetledger_card_tail_reads_total")
    assert served >= 40
    assert tail_reads < served / 2, "answers come from the follower, not from tail reads"


async def test_the_follower_keeps_to_its_budget_and_gives_up_cards_it_dropped(
    intake: Intake,
) -> None:
    cards = [new_id("card") for _ in range(6)]
    for card_id in cards:
        await intake.cards.IssueCard(issue_request(card_id, credit_limit=10**9))
        await _spend(intake, card_id, 5)
    built = await connect_store(intake.settings, "card")
    try:
        exact = CardStates(built.store, intake.settings.streams.subjects)
        one = state_bytes(await exact.current(cards[0]))
        live = LiveCards(built.store, intake.settings.streams.subjects, budget_bytes=3 * one + 10)
        live.start()
        last = await built.store.last_sequence()
        followed = [await live.state(card_id, last, wait=60) for card_id in cards]
        assert live.estimated_bytes <= 3 * one + 10
        assert followed[:3] == [None, None, None], "dropped by the budget: the caller reads exactly"
        for card_id, state in zip(cards[3:], followed[3:], strict=True):
            full = await exact.current(card_id)
            assert full.postings, "a decision keeps the purchase (refundable)"
            lean = msgspec.structs.replace(full, postings={}, closed_holds={})
            assert state == lean, "a followed state is the exact one, without what GetCard ignores"
        await live.stop()
    finally:
        await built.close()
