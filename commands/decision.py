"""``Decision``, the result of ``decide``, and the builders of its events.

A declined command yields exactly one ``TransactionDeclined`` naming the command type, a
machine-readable reason, a one-line detail for people, and the amount, currency and merchant
when they are known, so the read side can tell the cardholder what was refused.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypedDict

import msgspec

from commands.messages import (
    AdjustBalance,
    AuthorizeTransaction,
    CaptureTransaction,
    Command,
    CreateTransaction,
    ExpireAuthorization,
    FundCard,
    RefundTransaction,
    VoidTransaction,
    command_type,
)
from commands.state import CardState
from contracts.events import DeclineReason, Leg, Outcome, SourceEvent, TransactionDeclined
from contracts.money import format_minor


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one command: the events to append, and why when it was declined."""

    outcome: Outcome
    events: tuple[SourceEvent, ...]
    reason: DeclineReason | Literal[""] = ""
    detail: str = ""

    @property
    def accepted(self) -> bool:
        """Tell whether the command was accepted."""
        return self.outcome == "accepted"


class EventBase(TypedDict):
    """The fields every event of a decision shares."""

    card_id: str
    command_id: str
    at: datetime


def base(command: Command, now: datetime) -> EventBase:
    """Return the shared event fields: the card, the causing command and the decision instant."""
    return {"card_id": command.card_id, "command_id": command.command_id, "at": now}


def accept(*events: SourceEvent) -> Decision:
    """Return an accepted decision appending ``events``."""
    return Decision(outcome="accepted", events=events)


def decline(
    state: CardState, command: Command, now: datetime, reason: DeclineReason, detail: str
) -> Decision:
    """Return a declined decision recording one ``TransactionDeclined``."""
    amount, currency, merchant_id = _facts(state, command)
    event = TransactionDeclined(
        **base(command, now),
        command_type=command_type(command),
        reason=reason,
        detail=detail,
        amount=amount,
        currency=currency,
        merchant_id=merchant_id,
    )
    return Decision(outcome="declined", events=(event,), reason=reason, detail=detail)


def balanced_legs(state: CardState, card_amount: int, other_account: str) -> tuple[Leg, Leg]:
    """Return two legs summing to zero: ``card_amount`` on the card, its opposite on the other."""
    return (
        Leg(account_id=state.account_id, amount=card_amount, currency=state.currency),
        Leg(account_id=other_account, amount=-card_amount, currency=state.currency),
    )


def fmt(state: CardState, amount: int) -> str:
    """Render an amount in the card's currency for a decline's detail."""
    return format_minor(amount, state.currency)


def _facts(state: CardState, command: Command) -> tuple[int, str, str]:
    """Return the amount, currency and merchant a command is about, as far as they are known."""
    match command:
        case FundCard() | AdjustBalance():
            return command.amount, command.currency, ""
        case CreateTransaction() | AuthorizeTransaction():
            return command.amount, command.currency, command.merchant_id
        case CaptureTransaction() | VoidTransaction() | ExpireAuthorization():
            hold = state.holds.get(command.authorization_id) or state.closed_holds.get(
                command.authorization_id
            )
            merchant_id = hold.merchant_id if hold is not None else ""
            if isinstance(command, CaptureTransaction):
                return command.amount, command.currency or state.currency, merchant_id
            return 0, state.currency, merchant_id
        case RefundTransaction():
            posting = state.postings.get(command.original_transaction_id)
            merchant_id = posting.merchant_id if posting is not None else ""
            return command.amount, command.currency or state.currency, merchant_id
        case _:
            return 0, "", ""  # lifecycle commands move no money
