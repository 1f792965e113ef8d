"""``decide(state, command, now)``: the rules of the ledger, as a pure function of exact state.

A decision is either *accepted* (the events to append) or *declined* (exactly one recorded
``TransactionDeclined``, so a retry replays it and the cardholder is told). Three refusals record
nothing and raise instead: malformed input (``InvalidArgument``), an unknown card (``NotFound``)
and a second ``IssueCard`` for a card (``AlreadyExists``).

Checks run in a fixed order, so the reason for a decline is exact and predictable:
card status → currency → the transaction referred to → amounts.

Policy (each line a choice the issue left open):
- closed card: every command is declined ``card_closed``, except ``ExpireAuthorization``, which
  only releases money and must always be recordable;
- frozen card: only new spending (purchase, authorize) is declined ``card_frozen``. Funding
  (repayments), operator adjustments, captures of earlier holds, voids, refunds, limit changes and
  closing still work: a freeze stops new exposure, it does not trap money or settlements;
- a hold is lapsed at ``now >= expires_at``; from then on it counts for nothing, cannot be captured
  or voided (``authorization_expired``) and only the sweeper's ``ExpireAuthorization`` acts on it;
- ``ExpireAuthorization`` of a hold that has not lapsed raises ``InvalidArgument`` (nothing is
  recorded: the sweeper's deterministic command id must stay free for the real expiry);
- capturing a fully captured hold is ``capture_exceeds_authorization`` (nothing remains); capturing
  or voiding a voided hold is ``authorization_not_open``;
- ``CloseCard`` needs posted == 0 and nothing pending at ``now`` (``balance_not_zero``); holds that
  lapsed but are not yet swept do not block it, and the sweeper can still expire them afterwards;
- a card's posted balance never exceeds ``MAX_CARD_BALANCE``: a funding, positive adjustment or
  refund that would carry it beyond is declined ``balance_limit_exceeded`` (so no sequence of
  valid commands can overflow a card's int64 figures anywhere downstream);
- ``UpdateCreditLimit`` keeps available ≥ 0: declined ``limit_below_utilisation`` when
  posted + new limit − pending < 0;
- time per card never runs backwards: decisions use ``state.clock(now)``, and events' ``at`` is it.
"""

from __future__ import annotations

from datetime import datetime
from typing import assert_never

from commands.decision import Decision, accept, balanced_legs, base, decline, fmt
from commands.messages import (
    AdjustBalance,
    AuthorizeTransaction,
    CaptureTransaction,
    CloseCard,
    Command,
    CreateTransaction,
    ExpireAuthorization,
    FreezeCard,
    FundCard,
    IssueCard,
    RefundTransaction,
    UnfreezeCard,
    UpdateCreditLimit,
    VoidTransaction,
)
from commands.state import REFUNDABLE_POSTINGS, CardState
from commands.validation import validate
from contracts import accounts
from contracts.errors import AlreadyExists, InvalidArgument, NotFound
from contracts.events import (
    BalanceAdjusted,
    CardClosed,
    CardFrozen,
    CardFunded,
    CardIssued,
    CardLimitChanged,
    CardUnfrozen,
    TransactionAuthorized,
    TransactionCaptured,
    TransactionCreated,
    TransactionExpired,
    TransactionRefunded,
    TransactionVoided,
)
from contracts.money import MAX_CARD_BALANCE


def decide(
    state: CardState, command: Command, now: datetime, *, validated: bool = False
) -> Decision:
    """Decide ``command`` on ``state`` at ``now`` (timezone-aware); see the module for the rules.

    ``validated``: ``command`` is what ``validate`` returned (the intake validates each command
    once, before its first decision and any retry after a conflict)."""
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if not validated:
        command = validate(command)
    if isinstance(command, IssueCard):
        return _issue(state, command, now)
    if not state.exists:
        raise NotFound(f"card {command.card_id} not found")
    if state.card_id != command.card_id:
        raise ValueError(f"state of card {state.card_id} given for card {command.card_id}")
    now = state.clock(now)
    # Command ids are unique through the outcome markers; this guards the state's maps anyway.
    creates = isinstance(command, CreateTransaction | AuthorizeTransaction | CaptureTransaction)
    if creates and _known_id(state, command.command_id):
        raise AlreadyExists(f"transaction {command.command_id} already exists on this card")
    if isinstance(command, AuthorizeTransaction):
        if command.expires_at is None:
            raise InvalidArgument("expires_at must be set (the intake fills in its hold TTL)")
        if command.expires_at <= now:
            raise InvalidArgument("expires_at must be in the future")
    match command:
        case FreezeCard():
            return _freeze(state, command, now)
        case UnfreezeCard():
            return _unfreeze(state, command, now)
        case UpdateCreditLimit():
            return _update_limit(state, command, now)
        case CloseCard():
            return _close(state, command, now)
        case FundCard():
            return _fund(state, command, now)
        case AdjustBalance():
            return _adjust(state, command, now)
        case CreateTransaction() | AuthorizeTransaction():
            return _spend(state, command, now)
        case CaptureTransaction():
            return _capture(state, command, now)
        case VoidTransaction():
            return _void(state, command, now)
        case RefundTransaction():
            return _refund(state, command, now)
        case ExpireAuthorization():
            return _expire(state, command, now)
        case _:
            assert_never(command)


def expired_holds(state: CardState, now: datetime) -> list[str]:
    """Return the ids of open holds lapsed at ``now``, oldest expiry first (for the sweeper)."""
    now = state.clock(now)
    if state.next_expiry is None or now < state.next_expiry:
        return []
    lapsed = [(hold.expires_at, key) for key, hold in state.holds.items() if hold.lapsed(now)]
    return [key for _, key in sorted(lapsed)]


# --- card lifecycle ---------------------------------------------------------------------------


def _issue(state: CardState, command: IssueCard, now: datetime) -> Decision:
    if state.exists:
        raise AlreadyExists(f"card {command.card_id} already exists")
    return accept(
        CardIssued(
            card_id=command.card_id,
            command_id=command.command_id,
            at=now,
            account_id=accounts.card_account(command.card_id),
            cardholder_name=command.cardholder_name,
            card_type=command.card_type,
            currency=command.currency,
            credit_limit=command.credit_limit,
            last4=command.last4,
        )
    )


def _freeze(state: CardState, command: FreezeCard, now: datetime) -> Decision:
    if state.status == "closed":
        return decline(state, command, now, "card_closed", "the card is closed")
    if state.status == "frozen":
        return decline(state, command, now, "card_already_frozen", "the card is already frozen")
    return accept(CardFrozen(**base(command, now), reason=command.reason))


def _unfreeze(state: CardState, command: UnfreezeCard, now: datetime) -> Decision:
    if state.status == "closed":
        return decline(state, command, now, "card_closed", "the card is closed")
    if state.status != "frozen":
        return decline(state, command, now, "card_not_frozen", "the card is not frozen")
    return accept(CardUnfrozen(**base(command, now)))


def _update_limit(state: CardState, command: UpdateCreditLimit, now: datetime) -> Decision:
    if state.status == "closed":
        return decline(state, command, now, "card_closed", "the card is closed")
    if state.card_type != "credit":
        detail = f"a {state.card_type} card has no credit limit"
        return decline(state, command, now, "limit_not_applicable", detail)
    new = command.credit_limit
    if state.posted + new - state.pending(now) < 0:
        used = state.pending(now) - state.posted
        detail = f"limit {fmt(state, new)} is below utilisation {fmt(state, used)}"
        return decline(state, command, now, "limit_below_utilisation", detail)
    return accept(
        CardLimitChanged(**base(command, now), old_limit=state.credit_limit, new_limit=new)
    )


def _close(state: CardState, command: CloseCard, now: datetime) -> Decision:
    if state.status == "closed":
        return decline(state, command, now, "card_closed", "the card is already closed")
    pending = state.pending(now)
    if state.posted != 0 or pending != 0:
        detail = f"posted {fmt(state, state.posted)}, pending {fmt(state, pending)}"
        return decline(state, command, now, "balance_not_zero", detail)
    return accept(CardClosed(**base(command, now)))


# --- money ----------------------------------------------------------------------------------------


def _fund(state: CardState, command: FundCard, now: datetime) -> Decision:
    if refusal := _refuse_card(state, command, now, command.currency, spending=False):
        return refusal
    if too_high := _beyond_balance_limit(state, command, now, command.amount):
        return too_high
    return accept(
        CardFunded(
            **base(command, now),
            amount=command.amount,
            currency=state.currency,
            legs=balanced_legs(state, command.amount, accounts.FUNDING),
        )
    )


def _adjust(state: CardState, command: AdjustBalance, now: datetime) -> Decision:
    if refusal := _refuse_card(state, command, now, command.currency, spending=False):
        return refusal
    if -command.amount > state.available(now):
        return _insufficient(state, command, now, -command.amount)
    if too_high := _beyond_balance_limit(state, command, now, command.amount):
        return too_high
    return accept(
        BalanceAdjusted(
            **base(command, now),
            amount=command.amount,
            currency=state.currency,
            legs=balanced_legs(state, command.amount, accounts.ADJUSTMENTS),
            reason=command.reason,
            actor=command.actor,
        )
    )


def _spend(
    state: CardState, command: CreateTransaction | AuthorizeTransaction, now: datetime
) -> Decision:
    if refusal := _refuse_card(state, command, now, command.currency, spending=True):
        return refusal
    if command.amount > state.available(now):
        return _insufficient(state, command, now, command.amount)
    if isinstance(command, AuthorizeTransaction):
        assert command.expires_at is not None  # checked in decide()
        return accept(
            TransactionAuthorized(
                **base(command, now),
                merchant_id=command.merchant_id,
                amount=command.amount,
                currency=state.currency,
                expires_at=command.expires_at,
                description=command.description,
            )
        )
    merchant = accounts.merchant_account(command.merchant_id)
    return accept(
        TransactionCreated(
            **base(command, now),
            merchant_id=command.merchant_id,
            amount=command.amount,
            currency=state.currency,
            legs=balanced_legs(state, -command.amount, merchant),
            description=command.description,
        )
    )


def _capture(state: CardState, command: CaptureTransaction, now: datetime) -> Decision:
    if refusal := _refuse_card(state, command, now, command.currency, spending=False):
        return refusal
    hold = state.holds.get(command.authorization_id)
    if hold is None:
        ended = state.closed_holds.get(command.authorization_id)
        if ended is None:
            return decline(state, command, now, "authorization_not_found", "no such hold")
        if ended.ended == "expired":
            return decline(state, command, now, "authorization_expired", "the hold expired")
        if ended.ended == "voided":
            return decline(state, command, now, "authorization_not_open", "the hold was voided")
        detail = "the hold is fully captured"
        return decline(state, command, now, "capture_exceeds_authorization", detail)
    if hold.lapsed(now):
        return decline(state, command, now, "authorization_expired", "the hold expired")
    if command.amount > hold.remaining:
        detail = f"capture {fmt(state, command.amount)} exceeds held {fmt(state, hold.remaining)}"
        return decline(state, command, now, "capture_exceeds_authorization", detail)
    return accept(
        TransactionCaptured(
            **base(command, now),
            authorization_id=command.authorization_id,
            merchant_id=hold.merchant_id,
            amount=command.amount,
            currency=state.currency,
            legs=balanced_legs(state, -command.amount, accounts.merchant_account(hold.merchant_id)),
        )
    )


def _void(state: CardState, command: VoidTransaction, now: datetime) -> Decision:
    if refusal := _refuse_card(state, command, now, "", spending=False):
        return refusal
    hold = state.holds.get(command.authorization_id)
    if hold is None:
        ended = state.closed_holds.get(command.authorization_id)
        if ended is None:
            return decline(state, command, now, "authorization_not_found", "no such hold")
        if ended.ended == "expired":
            return decline(state, command, now, "authorization_expired", "the hold expired")
        detail = f"the hold was {ended.ended}"
        return decline(state, command, now, "authorization_not_open", detail)
    if hold.lapsed(now):
        return decline(state, command, now, "authorization_expired", "the hold expired")
    return accept(
        TransactionVoided(
            **base(command, now),
            authorization_id=command.authorization_id,
            released=hold.remaining,
            currency=state.currency,
        )
    )


def _refund(state: CardState, command: RefundTransaction, now: datetime) -> Decision:
    if refusal := _refuse_card(state, command, now, command.currency, spending=False):
        return refusal
    posting = state.postings.get(command.original_transaction_id)
    if posting is None:
        detail = (
            f"no such purchase or capture among the card's last {REFUNDABLE_POSTINGS} "
            "(older ones are past the refund window)"
        )
        return decline(state, command, now, "transaction_not_found", detail)
    if command.amount > posting.refundable:
        detail = f"refund {fmt(state, command.amount)} exceeds refundable {fmt(state, posting.refundable)}"
        return decline(state, command, now, "refund_exceeds_captured", detail)
    if too_high := _beyond_balance_limit(state, command, now, command.amount):
        return too_high
    return accept(
        TransactionRefunded(
            **base(command, now),
            original_transaction_id=command.original_transaction_id,
            merchant_id=posting.merchant_id,
            amount=command.amount,
            currency=state.currency,
            legs=balanced_legs(
                state, command.amount, accounts.merchant_account(posting.merchant_id)
            ),
        )
    )


def _expire(state: CardState, command: ExpireAuthorization, now: datetime) -> Decision:
    # No status check: releasing a hold is always allowed, on a frozen or closed card too.
    hold = state.holds.get(command.authorization_id)
    if hold is None:
        if command.authorization_id not in state.closed_holds:
            return decline(state, command, now, "authorization_not_found", "no such hold")
        return decline(state, command, now, "authorization_not_open", "the hold is closed")
    if not hold.lapsed(now):
        raise InvalidArgument(
            f"authorization_id does not expire until {hold.expires_at.isoformat()}"
        )
    return accept(
        TransactionExpired(
            **base(command, now),
            authorization_id=command.authorization_id,
            released=hold.remaining,
            currency=state.currency,
        )
    )


# --- helpers --------------------------------------------------------------------------------------


def _refuse_card(
    state: CardState, command: Command, now: datetime, currency: str, *, spending: bool
) -> Decision | None:
    """Decline for the card's status or a foreign currency (empty ``currency``: not given)."""
    if state.status == "closed":
        return decline(state, command, now, "card_closed", "the card is closed")
    if spending and state.status == "frozen":
        return decline(state, command, now, "card_frozen", "the card is frozen")
    if currency and currency != state.currency:
        detail = f"the card is in {state.currency}, not {currency}"
        return decline(state, command, now, "currency_mismatch", detail)
    return None


def _insufficient(state: CardState, command: Command, now: datetime, amount: int) -> Decision:
    detail = f"asked {fmt(state, amount)}, available {fmt(state, state.available(now))}"
    return decline(state, command, now, "insufficient_funds", detail)


def _beyond_balance_limit(
    state: CardState, command: Command, now: datetime, credit: int
) -> Decision | None:
    """Decline when crediting ``credit`` would carry the card's posted balance past the limit."""
    if credit <= 0 or state.posted + credit <= MAX_CARD_BALANCE:
        return None
    detail = (
        f"posted {fmt(state, state.posted)} + {fmt(state, credit)} exceeds the card balance"
        f" limit {fmt(state, MAX_CARD_BALANCE)}"
    )
    return decline(state, command, now, "balance_limit_exceeded", detail)


def _known_id(state: CardState, transaction_id: str) -> bool:
    return (
        transaction_id in state.holds
        or transaction_id in state.closed_holds
        or transaction_id in state.postings
    )
