"""The rules of ``decide``, one at a time: every decline reason is reachable and exact."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import msgspec
import pytest

from commands import (
    EMPTY,
    AdjustBalance,
    AuthorizeTransaction,
    CaptureTransaction,
    CardState,
    CloseCard,
    Command,
    CreateTransaction,
    Decision,
    ExpireAuthorization,
    FreezeCard,
    FundCard,
    IssueCard,
    RefundTransaction,
    UnfreezeCard,
    UpdateCreditLimit,
    VoidTransaction,
    decide,
    evolve,
    expired_holds,
    fold,
    sweeper_command_id,
)
from contracts import accounts
from contracts.errors import AlreadyExists, InvalidArgument, NotFound
from contracts.events import (
    CardFunded,
    TransactionCaptured,
    TransactionCreated,
    TransactionDeclined,
    TransactionExpired,
    TransactionVoided,
)
from contracts.money import MAX_AMOUNT, MAX_CARD_BALANCE

T0 = datetime(2030, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
CARD = "card-1"
_ids = count(1)


def _id() -> str:
    return f"cmd-{next(_ids)}"


def issue(card_type: str = "debit", limit: int = 0, currency: str = "USD") -> CardState:
    command = IssueCard(
        command_id=_id(),
        card_id=CARD,
        cardholder_name="Ada",
        card_type=card_type,  # type: ignore[arg-type]
        currency=currency,
        credit_limit=limit,
        last4="4242",
    )
    return fold(decide(EMPTY, command, T0).events)


def run(state: CardState, command: Command, now: datetime = T0) -> tuple[CardState, Decision]:
    decision = decide(state, command, now)
    return fold(decision.events, state), decision


def ok(state: CardState, command: Command, now: datetime = T0) -> CardState:
    state, decision = run(state, command, now)
    assert decision.accepted, decision
    return state


def declined(state: CardState, command: Command, reason: str, now: datetime = T0) -> Decision:
    after, decision = run(state, command, now)
    assert (decision.outcome, decision.reason) == ("declined", reason), decision
    (event,) = decision.events
    assert isinstance(event, TransactionDeclined)
    assert (event.reason, event.command_id, event.card_id) == (reason, command.command_id, CARD)
    # a decline changes nothing but the card's clock (and the version the shell sets)
    assert after == msgspec.structs.replace(state, last_at=max(now, state.last_at or now))
    return decision


def fund(amount: int, currency: str = "USD") -> FundCard:
    return FundCard(command_id=_id(), card_id=CARD, amount=amount, currency=currency)


def buy(amount: int, currency: str = "USD", merchant: str = "m-1") -> CreateTransaction:
    return CreateTransaction(
        command_id=_id(), card_id=CARD, merchant_id=merchant, amount=amount, currency=currency
    )


def hold(amount: int, ttl: timedelta = HOUR, auth_id: str = "") -> AuthorizeTransaction:
    return AuthorizeTransaction(
        command_id=auth_id or _id(),
        card_id=CARD,
        merchant_id="m-1",
        amount=amount,
        currency="USD",
        expires_at=T0 + ttl,
    )


def capture(auth_id: str, amount: int, currency: str = "") -> CaptureTransaction:
    return CaptureTransaction(
        command_id=_id(), card_id=CARD, authorization_id=auth_id, amount=amount, currency=currency
    )


def void(auth_id: str) -> VoidTransaction:
    return VoidTransaction(command_id=_id(), card_id=CARD, authorization_id=auth_id)


def expire(auth_id: str) -> ExpireAuthorization:
    return ExpireAuthorization(
        command_id=sweeper_command_id(auth_id), card_id=CARD, authorization_id=auth_id
    )


def refund(original: str, amount: int) -> RefundTransaction:
    return RefundTransaction(
        command_id=_id(), card_id=CARD, original_transaction_id=original, amount=amount
    )


def adjust(amount: int) -> AdjustBalance:
    return AdjustBalance(
        command_id=_id(), card_id=CARD, amount=amount, currency="USD", reason="fix", actor="ops"
    )


def limit(value: int) -> UpdateCreditLimit:
    return UpdateCreditLimit(command_id=_id(), card_id=CARD, credit_limit=value)


def freeze() -> FreezeCard:
    return FreezeCard(command_id=_id(), card_id=CARD, reason="lost")


def unfreeze() -> UnfreezeCard:
    return UnfreezeCard(command_id=_id(), card_id=CARD)


def close() -> CloseCard:
    return CloseCard(command_id=_id(), card_id=CARD)


def balances(*decisions: Decision) -> Counter[tuple[str, str]]:
    totals: Counter[tuple[str, str]] = Counter()
    for decision in decisions:
        for event in decision.events:
            for leg in getattr(event, "legs", ()):
                totals[(leg.account_id, leg.currency)] += leg.amount
    return totals


# --- refusals that record nothing ---------------------------------------------------------------


def test_unknown_card_is_not_found() -> None:
    with pytest.raises(NotFound):
        decide(EMPTY, fund(1), T0)


def test_issuing_an_existing_card_already_exists() -> None:
    state = issue()
    with pytest.raises(AlreadyExists):
        decide(state, IssueCard(**_issue_fields()), T0)


def _issue_fields() -> dict[str, Any]:
    return {
        "command_id": _id(),
        "card_id": CARD,
        "cardholder_name": "B",
        "card_type": "debit",
        "currency": "USD",
        "last4": "0000",
    }


def test_decide_validates_and_needs_an_aware_now() -> None:
    state = issue()
    with pytest.raises(InvalidArgument, match="amount"):
        decide(state, fund(0), T0)
    with pytest.raises(ValueError, match="timezone"):
        decide(state, fund(1), datetime(2030, 1, 1))


def test_a_hold_needs_a_future_expiry() -> None:
    state = ok(issue(), fund(100))
    with pytest.raises(InvalidArgument, match="expires_at"):
        decide(state, hold(10, ttl=timedelta(0)), T0)
    unset = AuthorizeTransaction(
        command_id=_id(), card_id=CARD, merchant_id="m", amount=1, currency="USD"
    )
    with pytest.raises(InvalidArgument, match="expires_at"):
        decide(state, unset, T0)


def test_expiring_a_hold_before_it_lapses_records_nothing() -> None:
    state = ok(ok(issue(), fund(100)), hold(10, auth_id="a-1"))
    with pytest.raises(InvalidArgument, match="does not expire until"):
        decide(state, expire("a-1"), T0 + HOUR - timedelta(microseconds=1))


# --- double entry ---------------------------------------------------------------------------------


def test_money_events_post_balanced_legs() -> None:
    state = issue()
    state, funded = run(state, fund(1000))
    state, bought = run(state, buy(300, merchant="m-2"))
    state, held = run(state, hold(200, auth_id="a-1"))
    state, captured = run(state, capture("a-1", 150))
    state, refunded = run(state, refund(bought.events[0].command_id, 100))
    state, adjusted = run(state, adjust(-50))
    totals = balances(funded, bought, held, captured, refunded, adjusted)
    assert totals == {
        ("card-card-1", "USD"): 1000 - 300 - 150 + 100 - 50,
        (accounts.FUNDING, "USD"): -1000,
        ("merchant-m-2", "USD"): 300 - 100,
        ("merchant-m-1", "USD"): 150,
        (accounts.ADJUSTMENTS, "USD"): 50,
    }
    assert sum(totals.values()) == 0
    assert state.posted == totals[("card-card-1", "USD")]
    assert state.pending(T0) == 50  # 200 held, 150 captured
    assert state.available(T0) == state.posted - 50


# --- available, credit and holds ------------------------------------------------------------------


def test_debit_card_spends_only_its_funds() -> None:
    state = ok(issue("prepaid"), fund(100))
    declined(state, buy(101), "insufficient_funds")
    state = ok(state, buy(100))
    assert state.available(T0) == 0


def test_credit_card_spends_up_to_its_limit_minus_pending() -> None:
    state = ok(issue("credit", limit=500), hold(200, auth_id="a-1"))
    assert (state.posted, state.pending(T0), state.available(T0)) == (0, 200, 300)
    declined(state, buy(301), "insufficient_funds")
    state = ok(state, buy(300))
    assert state.available(T0) == 0
    declined(state, hold(1), "insufficient_funds")


def test_a_lapsed_hold_stops_counting_at_once() -> None:
    state = ok(ok(issue(), fund(100)), hold(100, auth_id="a-1"))
    declined(state, buy(1), "insufficient_funds", now=T0 + HOUR - timedelta(microseconds=1))
    assert state.available(T0 + HOUR) == 100
    assert expired_holds(state, T0 + HOUR) == ["a-1"]
    state = ok(state, buy(100), now=T0 + HOUR)
    declined(state, capture("a-1", 1), "authorization_expired", now=T0 + HOUR)
    declined(state, void("a-1"), "authorization_expired", now=T0 + HOUR)
    state, expired = run(state, expire("a-1"), T0 + HOUR)
    assert isinstance(expired.events[0], TransactionExpired)
    assert expired.events[0].released == 100
    assert expired_holds(state, T0 + 2 * HOUR) == []
    declined(state, capture("a-1", 1), "authorization_expired", now=T0 + HOUR)
    declined(state, expire("a-1"), "authorization_not_open", now=T0 + HOUR)


def test_partial_captures_up_to_the_hold_then_exceeds() -> None:
    state = ok(ok(issue(), fund(1000)), hold(300, auth_id="a-1"))
    state = ok(state, capture("a-1", 100))
    state = ok(state, capture("a-1", 150))
    decision = declined(state, capture("a-1", 51), "capture_exceeds_authorization")
    event = decision.events[0]
    assert isinstance(event, TransactionDeclined)
    assert (event.command_type, event.amount, event.currency, event.merchant_id) == (
        "capture",
        51,
        "USD",
        "m-1",
    )
    state = ok(state, capture("a-1", 50))
    assert "a-1" not in state.holds
    assert state.closed_holds["a-1"].ended == "captured"
    declined(state, capture("a-1", 1), "capture_exceeds_authorization")
    declined(state, void("a-1"), "authorization_not_open")
    assert (state.posted, state.pending(T0)) == (700, 0)


def test_void_releases_the_rest_and_closes_the_hold() -> None:
    state = ok(ok(issue(), fund(1000)), hold(300, auth_id="a-1"))
    state = ok(state, capture("a-1", 100))
    state, voided = run(state, void("a-1"))
    assert isinstance(voided.events[0], TransactionVoided)
    assert voided.events[0].released == 200
    assert state.available(T0) == 900
    declined(state, void("a-1"), "authorization_not_open")
    declined(state, capture("a-1", 1), "authorization_not_open")
    declined(state, expire("a-1"), "authorization_not_open", now=T0 + HOUR)


def test_unknown_authorizations_are_not_found() -> None:
    state = ok(issue(), fund(10))
    declined(state, capture("nope", 1), "authorization_not_found")
    declined(state, void("nope"), "authorization_not_found")
    declined(state, expire("nope"), "authorization_not_found")


def test_refunds_up_to_what_was_posted() -> None:
    state = ok(ok(issue(), fund(1000)), hold(300, auth_id="a-1"))
    purchase = buy(200)
    state = ok(state, purchase)
    captured = capture("a-1", 120)
    state = ok(state, captured)
    state = ok(state, refund(purchase.command_id, 150))
    declined(state, refund(purchase.command_id, 51), "refund_exceeds_captured")
    state = ok(state, refund(purchase.command_id, 50))
    declined(state, refund(purchase.command_id, 1), "refund_exceeds_captured")
    declined(state, refund(captured.command_id, 121), "refund_exceeds_captured")
    state = ok(state, refund(captured.command_id, 120))
    declined(state, refund("a-1", 1), "transaction_not_found")  # a hold is not a posting
    declined(state, refund("nope", 1), "transaction_not_found")
    assert state.posted == 1000


def test_currency_must_be_the_cards() -> None:
    state = ok(ok(issue(), fund(1000)), hold(300, auth_id="a-1"))
    purchase = buy(10)
    state = ok(state, purchase)
    declined(state, fund(1, "EUR"), "currency_mismatch")
    declined(state, buy(1, "EUR"), "currency_mismatch")
    declined(state, capture("a-1", 1, "EUR"), "currency_mismatch")
    ok(state, capture("a-1", 1, "USD"))
    mismatched = RefundTransaction(
        command_id=_id(),
        card_id=CARD,
        original_transaction_id=purchase.command_id,
        amount=1,
        currency="GBP",
    )
    declined(state, mismatched, "currency_mismatch")


def test_adjustments_debit_only_what_is_available() -> None:
    state = ok(issue(), fund(100))
    declined(state, adjust(-101), "insufficient_funds")
    state = ok(state, adjust(-100))
    state = ok(state, adjust(+7))
    assert state.posted == 7


# --- lifecycle ------------------------------------------------------------------------------------


def test_freeze_blocks_new_spending_only() -> None:
    state = ok(ok(ok(issue(), fund(1000)), hold(300, auth_id="a-1")), buy(100))
    purchase_id = next(iter(state.postings))
    state = ok(state, freeze())
    declined(state, freeze(), "card_already_frozen")
    declined(state, buy(1), "card_frozen")
    declined(state, hold(1), "card_frozen")
    state = ok(state, fund(5))  # repayments and top-ups still land
    state = ok(state, capture("a-1", 100))  # earlier holds still settle
    state = ok(state, refund(purchase_id, 10))
    state = ok(state, adjust(-5))
    state = ok(state, void("a-1"))
    state = ok(state, unfreeze())
    declined(state, unfreeze(), "card_not_frozen")
    ok(state, buy(1))


def test_credit_limit_changes() -> None:
    declined(issue("debit"), limit(100), "limit_not_applicable")
    declined(issue("prepaid"), limit(0), "limit_not_applicable")
    state = ok(ok(issue("credit", limit=1000), buy(600)), hold(100, auth_id="a-1"))
    declined(state, limit(699), "limit_below_utilisation")
    state = ok(state, limit(700))
    assert state.available(T0) == 0
    state = ok(state, limit(800), now=T0 + HOUR)  # the lapsed hold no longer counts
    assert state.credit_limit == 800
    assert state.available(T0 + HOUR) == 200


def test_close_needs_a_zero_balance_and_nothing_pending() -> None:
    state = ok(issue(), fund(10))
    declined(state, close(), "balance_not_zero")  # posted 10
    state = ok(ok(state, adjust(-10)), fund(5))
    state = ok(state, hold(5, auth_id="a-2"))
    declined(state, close(), "balance_not_zero")  # posted 5, pending 5
    state = ok(state, adjust(-5), now=T0 + HOUR)  # the hold lapsed: available is 5
    state = ok(state, close(), now=T0 + HOUR)  # a lapsed, unswept hold does not block closing
    assert state.status == "closed"
    swept = ok(state, expire("a-2"), now=T0 + HOUR)  # the sweeper still releases it
    assert swept.holds == {}
    credit = ok(issue("credit", limit=10), hold(5))
    declined(credit, close(), "balance_not_zero")  # posted 0, pending 5


@pytest.mark.parametrize(
    "make",
    [fund, buy, lambda: hold(1), lambda: capture("a", 1), lambda: void("a"),
     lambda: refund("t", 1), adjust, lambda: limit(0), freeze, unfreeze, close],
)  # fmt: skip
def test_a_closed_card_declines_everything(make: Any) -> None:
    state = ok(issue("credit", limit=0), close())
    command = make(1) if make in (fund, buy, adjust) else make()
    declined(state, command, "card_closed")


# --- time, versions and folding -------------------------------------------------------------------


def test_per_card_time_never_runs_backwards() -> None:
    # A replica whose clock is behind must not revive a hold another replica saw lapse.
    state = ok(ok(issue(), fund(100)), hold(100, auth_id="a-1"))
    state = ok(state, buy(100), now=T0 + HOUR)
    assert state.last_at == T0 + HOUR
    decision = declined(state, capture("a-1", 100), "authorization_expired", now=T0)
    assert decision.events[0].at == T0 + HOUR
    assert state.available(state.clock(T0)) == 0


def test_evolve_records_the_stream_sequence_as_version() -> None:
    decision = decide(EMPTY, IssueCard(**_issue_fields()), T0)
    state = evolve(EMPTY, decision.events[0], 7)
    assert state.version == 7
    funded = decide(state, fund(5), T0).events[0]
    assert evolve(state, funded).version == 7
    assert evolve(state, funded, 9).version == 9
    with pytest.raises(ValueError, match="sequence"):
        evolve(state, funded, 7)


def test_declines_change_nothing_but_the_version() -> None:
    state = ok(issue(), fund(10))
    decision = decide(state, buy(11), T0)
    assert evolve(state, decision.events[0], 99) == msgspec.structs.replace(state, version=99)


def test_evolve_moves_money_by_the_legs_even_for_unknown_references() -> None:
    state = ok(issue(), fund(100))
    stray = TransactionCaptured(
        card_id=CARD,
        command_id="x",
        at=T0,
        authorization_id="never-held",
        merchant_id="m",
        amount=5,
        currency="USD",
        legs=decide(state, buy(5), T0).events[0].legs,  # type: ignore[union-attr]
    )
    after = evolve(state, stray)
    assert after.posted == 95
    assert after.holds == {}


def test_events_are_stamped_with_the_decision_instant() -> None:
    state = ok(issue(), fund(10))
    later = T0 + timedelta(minutes=3)
    (event,) = decide(state, buy(1), later).events
    assert isinstance(event, TransactionCreated)
    assert event.at == later
    funded = decide(state, fund(1), later).events[0]
    assert isinstance(funded, CardFunded)
    assert funded.legs[1].account_id == accounts.FUNDING


def test_expired_holds_lists_lapsed_holds_oldest_first() -> None:
    state = ok(issue(), fund(100))
    state = ok(state, hold(1, ttl=3 * HOUR, auth_id="a-late"))
    state = ok(state, hold(1, ttl=HOUR, auth_id="a-early"))
    state = ok(state, hold(1, ttl=2 * HOUR, auth_id="a-mid"))
    assert expired_holds(state, T0 + HOUR) == ["a-early"]
    assert expired_holds(state, T0 + 3 * HOUR) == ["a-early", "a-mid", "a-late"]


def test_transaction_ids_are_unique_per_card() -> None:
    state = ok(ok(issue(), fund(100)), hold(1, auth_id="a-1"))
    with pytest.raises(AlreadyExists):
        decide(state, hold(1, auth_id="a-1"), T0)


def test_issuing_records_the_card_for_lookups_and_never_a_pan() -> None:
    state = issue("credit", limit=500, currency="EUR")
    assert (state.exists, state.status, state.card_type, state.currency) == (
        True,
        "active",
        "credit",
        "EUR",
    )
    assert (state.account_id, state.credit_limit, state.last4) == ("card-card-1", 500, "4242")
    assert state.cardholder_name == "Ada"


def test_a_card_state_survives_a_snapshot() -> None:
    # The shell may snapshot states to skip replaying long histories: the state must round-trip.
    state = ok(ok(ok(issue(), fund(100)), hold(30, auth_id="a-1")), buy(20))
    state = ok(ok(state, capture("a-1", 10)), void("a-1"))
    encoded = msgspec.json.encode(state)
    assert msgspec.json.decode(encoded, type=CardState) == state


# --- the card balance limit -----------------------------------------------------------------------


def test_no_credit_carries_a_card_beyond_its_balance_limit() -> None:
    """Repeated maximum fundings once pushed a card (and the ledger) past 2^63−1 (issue 10)."""
    state = issue("debit")
    for _ in range(MAX_CARD_BALANCE // MAX_AMOUNT):
        state = ok(state, fund(MAX_AMOUNT))
    assert state.posted == MAX_CARD_BALANCE
    decision = declined(state, fund(1), "balance_limit_exceeded")
    assert "balance limit" in decision.detail
    declined(state, adjust(1), "balance_limit_exceeded")
    state = ok(state, adjust(-5))  # taking money out is always possible
    state = ok(state, buy(MAX_AMOUNT, merchant="m-big"))
    purchase = next(iter(state.postings))
    state = ok(state, fund(MAX_AMOUNT))
    declined(state, refund(purchase, 6), "balance_limit_exceeded")
    state = ok(state, refund(purchase, 5))
    assert state.posted == MAX_CARD_BALANCE
