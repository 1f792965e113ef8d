"""The pure core of the notification projection: which notifications a stream event causes.

No I/O here (CONTRIBUTING.md, convention 1): the Postgres adapter loads the per-card state and preferences,
calls these functions in stream order and stores what they return, so the same fold can be
re-run independently (``verify``) and hammered by property tests.

Notification ids are stable across replays, so they are the idempotency keys of both the rows
(unique constraint) and the webhook deliveries:

- a source event at ``<stream>:<sequence>`` gives ``"<stream>:<sequence>"``;
- a low-balance alert it triggers gives ``"<stream>:<sequence>:low_balance"``;
- a ledger entry gives ``"entry:<entry_id>"`` (the outbox is at-least-once: the same entry may sit
  at two derived-stream sequences, and only the first one counts).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final, NamedTuple, get_args

import msgspec

from contracts.accounts import card_account
from contracts.events import (
    BalanceAdjusted,
    CardFunded,
    CardIssued,
    CardLimitChanged,
    LedgerEntryCreated,
    Leg,
    NotificationKind,
    SourceEvent,
    TransactionAuthorized,
    TransactionCaptured,
    TransactionCreated,
    TransactionDeclined,
    TransactionExpired,
    TransactionRefunded,
    TransactionVoided,
)
from contracts.ids import mask_digit_runs
from contracts.money import format_minor

ALL_KINDS: Final[tuple[NotificationKind, ...]] = get_args(NotificationKind)
# Pushed unless a scope says otherwise; "posted" repeats what the money notifications say.
DEFAULT_KINDS: Final[tuple[NotificationKind, ...]] = tuple(k for k in ALL_KINDS if k != "posted")
DEFAULT_LOW_BALANCE_PERCENT: Final = 10

# A run of 12+ digits (spaces or dashes allowed between them) looks like a card number: never let
# one through into a notification, whatever a client put into an id or a free-text field.
_PAN_LIKE: Final = re.compile(r"\d(?:[ -]?\d){11,}")


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """One notification, as stored, listed, streamed and POSTed (money in minor units)."""

    notification_id: str
    card_id: str
    kind: NotificationKind
    occurred_at: datetime
    message: str
    amount: int = 0
    currency: str = ""
    merchant_id: str = ""
    reason: str = ""
    last4: str = ""
    balance: int = 0  # available (low_balance) or posted after the entry (posted)
    command_id: str = ""
    source_event_type: str = ""
    stream: str
    sequence: int
    sub: int = 0  # 0 for the event's own notification, 1 for the low-balance alert it triggers


class _Facts(NamedTuple):
    amount: int = 0
    currency: str = ""
    merchant_id: str = ""
    reason: str = ""


_Told = tuple[NotificationKind, str, _Facts]
_Amounted = (
    CardFunded
    | BalanceAdjusted
    | TransactionCreated
    | TransactionAuthorized
    | TransactionCaptured
    | TransactionRefunded
)


class CardState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the projection needs to know about a card to word alerts and detect low balances.

    Its size does not grow with the card's history: what the open holds hold is one total
    (``held``), moved by each hold's events. The stream's holds are decided by the intake, so
    every capture, void and expiry refers to an open hold and never takes more than it holds: the
    total is the sum the intake's state has. A per-hold map was kept before, and every hold left
    open made the row each batch loads and rewrites bigger (6 open holds and ~450 B a card after
    100,000 commands of the long soak, growing with each); a state stored then still decodes: its
    map is added into ``held``.
    """

    card_id: str
    account_id: str = ""
    card_type: str = "debit"
    currency: str = ""
    credit_limit: int = 0
    last4: str = ""
    posted: int = 0  # the card account's balance: positive = the holder's money
    held: int = 0  # what the card's open holds still hold: authorized − captured − released
    holds: dict[str, int] = msgspec.field(default_factory=dict)  # only in states stored before
    funds_reference: int = 0  # available right after the latest top-up (debit/prepaid)
    low: bool = False  # below the threshold and already alerted; re-armed when back above

    def __post_init__(self) -> None:
        if self.holds:  # a state stored with the per-hold map: fold it into the total
            self.held += sum(self.holds.values())
            self.holds = {}

    @property
    def available(self) -> int:
        """Posted balance plus credit limit minus open holds, in minor units."""
        return self.posted + self.credit_limit - self.held


class ScopePrefs(msgspec.Struct, frozen=True, kw_only=True):
    """One scope's own preferences (a card, or the operator default); ``None`` inherits."""

    kinds: tuple[NotificationKind, ...] | None = None
    low_balance_threshold: int | None = None
    low_balance_percent: int | None = None


class Effective(msgspec.Struct, frozen=True, kw_only=True):
    """The preferences in force for a card after inheriting the operator default."""

    kinds: tuple[NotificationKind, ...]
    low_balance_threshold: int | None  # absolute, minor units; wins over the percentage
    low_balance_percent: int


def effective(card: ScopePrefs | None, default: ScopePrefs | None) -> Effective:
    """Resolve a card's preferences: the card's own value, else the operator's, else built-ins."""
    card = card or ScopePrefs()
    default = default or ScopePrefs()
    kinds = card.kinds if card.kinds is not None else default.kinds
    # The most specific scope that says anything about low balances decides both numbers.
    rule = card if _has_low_rule(card) else default
    return Effective(
        kinds=DEFAULT_KINDS if kinds is None else kinds,
        low_balance_threshold=rule.low_balance_threshold,
        low_balance_percent=(
            DEFAULT_LOW_BALANCE_PERCENT
            if rule.low_balance_percent is None
            else rule.low_balance_percent
        ),
    )


def _has_low_rule(prefs: ScopePrefs) -> bool:
    return prefs.low_balance_threshold is not None or prefs.low_balance_percent is not None


def low_balance_threshold(card: CardState, prefs: Effective) -> int:
    """The available balance below which a card is alerted (0 disables the alert)."""
    if prefs.low_balance_threshold is not None:
        return prefs.low_balance_threshold
    reference = card.credit_limit if card.card_type == "credit" else card.funds_reference
    return reference * prefs.low_balance_percent // 100  # integer minor units, never a float


def redact(text: str) -> str:
    """Mask anything that looks like a card number, keeping its last four digits."""
    return mask_digit_runs(text, _PAN_LIKE, 12)


def new_card_state(card_id: str) -> CardState:
    """The state of a card the projection has not seen issued (its events still get told)."""
    return CardState(card_id=card_id, account_id=card_account(card_id))


def on_source_event(
    card: CardState, event: SourceEvent, stream: str, sequence: int, prefs: Effective
) -> list[Notification]:
    """Fold one source event into ``card`` (in place) and return the notifications it causes."""
    before_available = card.available
    own = _evolve_and_describe(card, event)
    out: list[Notification] = []
    if own is not None:
        kind, message, facts = own
        out.append(
            Notification(
                notification_id=f"{stream}:{sequence}",
                card_id=event.card_id,
                kind=kind,
                occurred_at=event.at,
                message=redact(message + _ending(card)),
                last4=card.last4,
                command_id=redact(event.command_id),
                source_event_type=_tag(event),
                stream=stream,
                sequence=sequence,
                amount=facts.amount,
                currency=facts.currency,
                merchant_id=redact(facts.merchant_id),
                reason=facts.reason,
            )
        )
    if card.available != before_available or isinstance(event, (CardLimitChanged, CardFunded)):
        alert = _low_balance(card, event, stream, sequence, prefs)
        if alert is not None:
            out.append(alert)
    return out


def _low_balance(
    card: CardState, event: SourceEvent, stream: str, sequence: int, prefs: Effective
) -> Notification | None:
    threshold = low_balance_threshold(card, prefs)
    if threshold <= 0 or card.available >= threshold:
        card.low = False  # re-arm: the next fall below the threshold is told again
        return None
    if card.low:
        return None  # already told; no alert per purchase while it stays low
    card.low = True
    available = format_minor(card.available, card.currency)
    return Notification(
        notification_id=f"{stream}:{sequence}:low_balance",
        card_id=card.card_id,
        kind="low_balance",
        occurred_at=event.at,
        message=redact(
            f"Low balance: {available} available, below "
            f"{format_minor(threshold, card.currency)}{_ending(card)}"
        ),
        currency=card.currency,
        last4=card.last4,
        balance=card.available,
        command_id=redact(event.command_id),
        source_event_type=_tag(event),
        stream=stream,
        sequence=sequence,
        sub=1,
    )


def _evolve_and_describe(card: CardState, event: SourceEvent) -> _Told | None:
    """Apply ``event`` to ``card``; return (kind, message, extra fields) if users are told."""
    match event:
        case CardIssued():
            card.account_id = event.account_id
            card.card_type = event.card_type
            card.currency = event.currency
            card.credit_limit = event.credit_limit
            card.last4 = event.last4
            return None
        case CardLimitChanged():
            card.credit_limit = event.new_limit
            return None
        case CardFunded():
            _post(card, event.legs)
            card.funds_reference = card.available
            return _money("funding", f"Card funded with {_fmt(event)}", event)
        case BalanceAdjusted():
            _post(card, event.legs)
            return _money("adjustment", f"Balance adjusted by {_fmt(event)}", event)
        case TransactionCreated():
            _post(card, event.legs)
            text = f"Purchase of {_fmt(event)} at {event.merchant_id}"
            return _money("purchase", text, event, event.merchant_id)
        case TransactionAuthorized():
            card.held += event.amount
            text = f"Hold of {_fmt(event)} at {event.merchant_id}"
            return _money("hold", text, event, event.merchant_id)
        case TransactionCaptured():
            _post(card, event.legs)
            card.held -= event.amount
            text = f"Captured {_fmt(event)} at {event.merchant_id}"
            return _money("capture", text, event, event.merchant_id)
        case TransactionVoided():
            card.held -= event.released
            text = f"Hold released: {format_minor(event.released, event.currency)}"
            return "void", text, _Facts(event.released, event.currency)
        case TransactionExpired():
            card.held -= event.released
            text = f"Hold expired: {format_minor(event.released, event.currency)} released"
            return "expiry", text, _Facts(event.released, event.currency)
        case TransactionRefunded():
            _post(card, event.legs)
            text = f"Refund of {_fmt(event)} from {event.merchant_id}"
            return _money("refund", text, event, event.merchant_id)
        case TransactionDeclined():
            what = event.command_type.replace("_", " ")
            amount = f" of {format_minor(event.amount, event.currency)}" if event.currency else ""
            at = f" at {event.merchant_id}" if event.merchant_id else ""
            facts = _Facts(event.amount, event.currency, event.merchant_id, event.reason)
            return "decline", f"Declined: {what}{amount}{at} ({event.reason})", facts
        case _:
            return None  # freeze, unfreeze, close: not notifications (yet)


def on_entry(entry: LedgerEntryCreated, stream: str, sequence: int) -> Notification | None:
    """Return the "posted" notification of a ledger entry on a card's own account, if any."""
    if entry.account_id != card_account(entry.card_id):
        return None  # merchant and house legs have nobody to tell
    amount = format_minor(entry.amount, entry.currency)
    balance = format_minor(entry.balance_after, entry.currency)
    return Notification(
        notification_id=f"entry:{entry.entry_id}",
        card_id=entry.card_id,
        kind="posted",
        occurred_at=entry.effective_at,
        message=redact(f"Posted {amount}; balance {balance}"),
        amount=entry.amount,
        currency=entry.currency,
        balance=entry.balance_after,
        command_id=redact(entry.transaction_id),
        source_event_type=entry.event_type,
        stream=stream,
        sequence=sequence,
    )


def _post(card: CardState, legs: tuple[Leg, ...]) -> None:
    # The card account's own legs are exactly the change of its posted balance.
    account = card.account_id or card_account(card.card_id)
    card.posted += sum(leg.amount for leg in legs if leg.account_id == account)


def _money(kind: NotificationKind, message: str, event: _Amounted, merchant_id: str = "") -> _Told:
    return kind, message, _Facts(event.amount, event.currency, merchant_id)


def _fmt(event: _Amounted) -> str:
    return format_minor(event.amount, event.currency)


def _ending(card: CardState) -> str:
    return f" on card ending {card.last4}" if card.last4 else ""


def _tag(event: msgspec.Struct) -> str:
    tag = type(event).__struct_config__.tag
    return tag if isinstance(tag, str) else ""
