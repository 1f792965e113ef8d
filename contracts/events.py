"""The event catalogue: every fact jetledger records, as frozen, versioned ``msgspec.Struct``s.

Rules (CONTRIBUTING.md, convention 5): the tag is ``<name>.v<N>``; new fields get defaults; a breaking change is a new
version plus an upcaster in ``contracts.codec``. Money is ``int`` minor units plus an ISO-4217 code.
No event ever carries a full card number or a CVV: cards are known by id and ``last4`` only.

Every source event lives on its card's subject family (``card.<card_id>.…``, see
``contracts.subjects``) and names the client command that caused it (``command_id``; for money
commands this is the client's ``transaction_id``). Events that move money carry their ``legs``,
which sum to zero per currency.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

import msgspec

CardType = Literal["debit", "credit", "prepaid"]
Outcome = Literal["accepted", "declined"]

# Machine-readable decline reasons (also the ``reason`` of a FAILED_PRECONDITION reply).
DeclineReason = Literal[
    "insufficient_funds",
    "card_frozen",
    "card_closed",
    "card_not_frozen",
    "card_already_frozen",
    "currency_mismatch",
    "authorization_not_found",
    "authorization_not_open",
    "authorization_expired",
    "capture_exceeds_authorization",
    "transaction_not_found",
    "refund_exceeds_captured",
    "limit_below_utilisation",
    "limit_not_applicable",
    "balance_not_zero",
    "balance_limit_exceeded",
]


class Leg(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One side of a double-entry posting: a signed amount on one account."""

    account_id: str
    amount: int  # minor units; negative = debit (money leaves the account), positive = credit
    currency: str


class Event(msgspec.Struct, frozen=True, tag_field="type", kw_only=True):
    """Fields every source event carries."""

    card_id: str
    command_id: str
    at: datetime  # when it was decided (UTC); the effective time of any legs
    # The recorded command (docs/intake.md, idempotency): its type tag and the sha256 fingerprint of
    # its payload as sent. Every event of a command carries both, so the card's own history answers
    # "was this id used, with which payload, with which outcome" and no marker subject is needed.
    # Empty in events written before they existed (the intake then asks the command index).
    command_type: str = ""
    fingerprint: str = ""


# --- card lifecycle (every event of a card is stored on its one subject, card.<card_id>) ----------


class CardIssued(Event, frozen=True, tag="card.issued.v1"):
    account_id: str
    cardholder_name: str
    card_type: CardType
    currency: str
    credit_limit: int = 0  # minor units; 0 for debit and prepaid cards
    last4: str = ""


class CardFrozen(Event, frozen=True, tag="card.frozen.v1"):
    reason: str = ""


class CardUnfrozen(Event, frozen=True, tag="card.unfrozen.v1"):
    """A frozen card takes payments again."""


class CardLimitChanged(Event, frozen=True, tag="card.limit_changed.v1"):
    old_limit: int
    new_limit: int


class CardClosed(Event, frozen=True, tag="card.closed.v1"):
    """The card declines every further command (``card_closed``); its history stays."""


class CardFunded(Event, frozen=True, tag="card.funded.v1"):
    """Money in: a top-up (debit/prepaid) or a repayment (credit), from the funding house account."""

    amount: int
    currency: str
    legs: tuple[Leg, ...]


class BalanceAdjusted(Event, frozen=True, tag="card.adjusted.v1"):
    """An operator correction, booked against the adjustments house account."""

    amount: int  # signed: positive credits the card, negative debits it
    currency: str
    legs: tuple[Leg, ...]
    reason: str
    actor: str


# --- money: the card's account (also on card.<card_id>) -------------------------------------------


class TransactionCreated(Event, frozen=True, tag="transaction.created.v1"):
    """A one-step purchase: posts immediately (the seed's ``transaction.created``)."""

    merchant_id: str
    amount: int
    currency: str
    legs: tuple[Leg, ...]
    description: str = ""


class TransactionAuthorized(Event, frozen=True, tag="transaction.authorized.v1"):
    """A hold: reduces the card's available balance until captured, voided or expired."""

    merchant_id: str
    amount: int
    currency: str
    expires_at: datetime
    description: str = ""


class TransactionCaptured(Event, frozen=True, tag="transaction.captured.v1"):
    """A full or partial capture of a hold: posts the captured amount."""

    authorization_id: str
    merchant_id: str
    amount: int
    currency: str
    legs: tuple[Leg, ...]


class TransactionVoided(Event, frozen=True, tag="transaction.voided.v1"):
    """The rest of a hold is released by the merchant."""

    authorization_id: str
    released: int
    currency: str


class TransactionExpired(Event, frozen=True, tag="transaction.expired.v1"):
    """The rest of a hold is released because it expired (appended by the sweeper)."""

    authorization_id: str
    released: int
    currency: str


class TransactionRefunded(Event, frozen=True, tag="transaction.refunded.v1"):
    """All or part of a posted purchase or capture goes back to the card."""

    original_transaction_id: str
    merchant_id: str
    amount: int
    currency: str
    legs: tuple[Leg, ...]


class TransactionDeclined(Event, frozen=True, tag="transaction.declined.v1"):
    """A command refused by the rules. Recorded so a retry replays the decline and users are told."""

    command_type: str
    reason: DeclineReason
    detail: str = ""
    amount: int = 0
    currency: str = ""
    merchant_id: str = ""


SourceEvent = (
    CardIssued
    | CardFrozen
    | CardUnfrozen
    | CardLimitChanged
    | CardClosed
    | CardFunded
    | BalanceAdjusted
    | TransactionCreated
    | TransactionAuthorized
    | TransactionCaptured
    | TransactionVoided
    | TransactionExpired
    | TransactionRefunded
    | TransactionDeclined
)

SOURCE_EVENT_TYPES: tuple[type[Event], ...] = (
    CardIssued,
    CardFrozen,
    CardUnfrozen,
    CardLimitChanged,
    CardClosed,
    CardFunded,
    BalanceAdjusted,
    TransactionCreated,
    TransactionAuthorized,
    TransactionCaptured,
    TransactionVoided,
    TransactionExpired,
    TransactionRefunded,
    TransactionDeclined,
)

# --- the legacy idempotency marker: command.<command_id> ------------------------------------------


class CommandRecorded(msgspec.Struct, frozen=True, tag_field="type", tag="command.recorded.v1"):
    """The outcome marker of a command, appended atomically with the command's events (legacy).

    Money and card commands no longer write it: their events carry the command id and fingerprint
    (``Event.command_type``, ``Event.fingerprint``), and the command index projection indexes both
    kinds. Notification preferences still write it. It is the first and only message on ``command.<command_id>`` (expected subject sequence 0), so a
    retry with the same id at any later time finds it, compares ``fingerprint`` (a hash of the
    normalised command, id excluded) and returns the original outcome.
    """

    command_id: str
    command_type: str
    fingerprint: str
    outcome: Outcome
    card_id: str
    at: datetime
    reason: str = ""  # decline reason when outcome == "declined"
    detail: str = ""
    event_types: tuple[str, ...] = ()  # tags of the events appended with it, in order


# --- derived: ledger.entry_created.<account_id> (published by the ledger projection's outbox) -----


class LedgerEntryCreated(
    msgspec.Struct, frozen=True, tag_field="type", tag="ledger.entry_created.v1"
):
    """One journal entry (one leg) written by the ledger projection (the seed's ``ledger.entry_created``).

    Consumers must be idempotent by ``entry_id``: the outbox relay is at-least-once.
    """

    entry_id: str  # "<stream>:<sequence>:<leg index>": stable across replays
    transaction_id: str
    card_id: str
    account_id: str
    amount: int
    currency: str
    balance_after: int
    event_type: str
    effective_at: datetime
    stream: str
    stream_sequence: int


# --- notification preferences: notify.card.<card_id>.<suffix> and notify.default.<suffix> -----------

# What a user can be told about. "posted" (one per ledger entry on the card's account) is opt-in.
NotificationKind = Literal[
    "purchase",
    "decline",
    "hold",
    "capture",
    "void",
    "expiry",
    "refund",
    "funding",
    "adjustment",
    "low_balance",
    "posted",
]


class NotifyEvent(msgspec.Struct, frozen=True, tag_field="type", kw_only=True):
    """Fields every notification-preference event carries.

    ``card_id`` names the card whose preferences change; the empty string is the operator's global
    default, which applies to every card that has not set its own (and whose webhook endpoints
    receive every card's notifications). Preferences are decisions, so they are events: a rebuild of
    the notification projection keeps them (docs/architecture.md, §1).
    """

    subject_suffix: ClassVar[str]

    card_id: str = ""
    command_id: str
    at: datetime


class NotificationPreferencesSet(NotifyEvent, frozen=True, tag="notify.preferences_set.v1"):
    """Replace one scope's preferences; ``None`` means "inherit the operator default"."""

    subject_suffix: ClassVar[str] = "preferences_set"
    kinds: tuple[NotificationKind, ...] | None = None  # kinds pushed to webhooks
    low_balance_threshold: int | None = None  # minor units of the card's currency
    low_balance_percent: int | None = None  # of the credit limit, or of the funds after a top-up


class WebhookEndpointSet(NotifyEvent, frozen=True, tag="notify.webhook_set.v1"):
    """Add a webhook endpoint, or replace it (new URL or rotated secret) when the id exists."""

    subject_suffix: ClassVar[str] = "webhook_set"
    endpoint_id: str
    url: str
    secret: str  # HMAC-SHA256 key of the endpoint's signatures; never logged, never returned


class WebhookEndpointRemoved(NotifyEvent, frozen=True, tag="notify.webhook_removed.v1"):
    """Stop delivering to one webhook endpoint (pending deliveries to it are cancelled)."""

    subject_suffix: ClassVar[str] = "webhook_removed"
    endpoint_id: str


PreferenceEvent = NotificationPreferencesSet | WebhookEndpointSet | WebhookEndpointRemoved
