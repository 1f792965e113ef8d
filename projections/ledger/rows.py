"""The sans-I/O core of the ledger projector: one event in, the rows it produces out.

``Projection.apply`` turns a decoded source event at a stream position into journal entries (one
per leg), a transaction row, card hold/limit changes, and new balance values. It
reads and updates balances through a ``BalanceBook`` that the caller fills: the live projector
loads the touched accounts from Postgres per batch, a rebuild keeps every account in memory.
No I/O here, so the live and rebuild paths share exactly the same arithmetic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from contracts.accounts import card_account
from contracts.codec import event_type
from contracts.errors import LedgerError
from contracts.events import (
    BalanceAdjusted,
    CardFunded,
    CardIssued,
    CardLimitChanged,
    Leg,
    SourceEvent,
    TransactionAuthorized,
    TransactionCaptured,
    TransactionCreated,
    TransactionDeclined,
    TransactionExpired,
    TransactionRefunded,
    TransactionVoided,
)


class InvalidEvent(LedgerError):
    """A decodable event that breaks a ledger invariant (e.g. legs not summing to zero): poison."""


def account_kind(account_id: str) -> str:
    """Return ``card``, ``merchant`` or ``house`` for an account id."""
    kind = account_id.split("-", 1)[0]
    if kind not in ("card", "merchant", "house"):
        raise InvalidEvent(f"unknown account kind in {account_id!r}")
    return kind


def entry_id(stream: str, sequence: int, leg_index: int) -> str:
    """Return the stable id of one entry: ``<stream>:<sequence>:<leg index>``."""
    return f"{stream}:{sequence}:{leg_index}"


@dataclass(slots=True)
class Balance:
    """One account's balance in one currency, in minor units."""

    account_id: str
    currency: str
    kind: str
    card_id: str | None = None
    posted: int = 0
    pending: int = 0
    credit_limit: int = 0
    entry_count: int = 0
    stream: str = ""
    last_sequence: int = 0
    updated_at: datetime | None = None

    @property
    def available(self) -> int:
        """Spendable money: posted + credit limit - open holds for cards, posted otherwise."""
        if self.kind == "card":
            return self.posted + self.credit_limit - self.pending
        return self.posted


BalanceKey = tuple[str, str]  # (account_id, currency)


@dataclass(slots=True)
class BalanceBook:
    """The balances the projector may read and change; ``touched`` are the ones to write back."""

    balances: dict[BalanceKey, Balance] = field(default_factory=dict)
    touched: dict[BalanceKey, Balance] = field(default_factory=dict)
    # card account id -> its balance (a card account holds exactly one currency, its card's)
    _cards: dict[str, Balance] = field(default_factory=dict)

    def add(self, balance: Balance) -> None:
        """Put a balance loaded from storage into the book (not marked as touched)."""
        self.balances[(balance.account_id, balance.currency)] = balance
        if balance.kind == "card":
            self._cards[balance.account_id] = balance

    def get(self, account_id: str, currency: str) -> Balance:
        """Return the balance of an account in a currency, opening it at zero if new."""
        key = (account_id, currency)
        found = self.balances.get(key)
        if found is None:
            found = Balance(account_id, currency, account_kind(account_id))
            self.add(found)
        self.touched[key] = found
        return found

    def card(self, card_id: str) -> Balance:
        """Return the balance row of a card's own account (opened by ``card.issued``)."""
        account = card_account(card_id)
        bal = self._cards.get(account)
        if bal is None:
            raise InvalidEvent(
                f"event for card {card_id!r} whose account {account} was never opened"
            )
        self.touched[(account, bal.currency)] = bal
        return bal


EntryRow = tuple[str, int, int, str, str, str, int, str, str, int, str, datetime]
TransactionRow = tuple[
    str,
    int,
    str,
    str,
    str | None,
    str,
    str,
    int,
    str,
    str,
    str,
    str,
    str,
    datetime,
    datetime | None,
]
CardChangeRow = tuple[str, int, str, str, int, int | None, datetime]


@dataclass(slots=True)
class Rows:
    """Rows produced by a run of events, in stream order, ready for COPY."""

    entries: list[EntryRow] = field(default_factory=list)
    transactions: list[TransactionRow] = field(default_factory=list)
    card_changes: list[CardChangeRow] = field(default_factory=list)

    def clear(self) -> None:
        """Forget the rows (after they were written)."""
        self.entries.clear()
        self.transactions.clear()
        self.card_changes.clear()


def _check_legs(legs: tuple[Leg, ...], tag: str, stream: str, sequence: int) -> None:
    if len(legs) == 2:  # nearly every event: one debit, one credit, one currency
        a, b = legs
        if (
            type(a.amount) is int
            and type(b.amount) is int
            and a.amount
            and a.amount + b.amount == 0
            and a.currency == b.currency
            and a.account_id in _KNOWN_KINDS
            and b.account_id in _KNOWN_KINDS
        ):
            return
    _check_legs_slowly(legs, f"{tag} at {stream}:{sequence}")


class _KnownKinds(dict[str, str]):
    """Account ids whose kind was checked once (bounded: cleared when large)."""

    def __missing__(self, account_id: str) -> str:
        if len(self) > 1_000_000:
            self.clear()
        kind = self[account_id] = account_kind(account_id)
        return kind

    def __contains__(self, account_id: object) -> bool:
        if not isinstance(account_id, str):
            return False
        try:
            self[account_id]
        except InvalidEvent:
            return False
        return True


_KNOWN_KINDS = _KnownKinds()


def _check_legs_slowly(legs: Iterable[Leg], what: str) -> None:
    totals: dict[str, int] = defaultdict(int)
    count = 0
    for leg in legs:
        if type(leg.amount) is not int or leg.amount == 0:
            raise InvalidEvent(f"{what}: leg amount must be a non-zero integer, got {leg.amount!r}")
        account_kind(leg.account_id)
        totals[leg.currency] += leg.amount
        count += 1
    if count < 2 or any(totals.values()):
        raise InvalidEvent(f"{what}: legs must be ≥ 2 and sum to zero per currency: {totals}")


_POSTING_KINDS: dict[type, str] = {CardFunded: "funding", BalanceAdjusted: "adjustment"}


@dataclass(slots=True)
class Projection:
    """Applies events to a ``BalanceBook`` and appends the resulting rows to ``rows``."""

    book: BalanceBook
    rows: Rows = field(default_factory=Rows)

    def apply(self, event: SourceEvent, stream: str, sequence: int) -> None:
        """Project one event stored at ``(stream, sequence)``."""
        tag = event_type(event)
        at = event.at
        if isinstance(event, CardIssued):
            bal = self.book.get(event.account_id, event.currency)
            if event.account_id != card_account(event.card_id):
                raise InvalidEvent(f"card {event.card_id} issued with account {event.account_id}")
            bal.card_id = event.card_id
            bal.credit_limit = event.credit_limit
            self._touch(bal, stream, sequence, at)
            self._card_change(bal, stream, sequence, 0, event.credit_limit, at)
        elif isinstance(event, CardLimitChanged):
            bal = self.book.card(event.card_id)
            bal.credit_limit = event.new_limit
            self._touch(bal, stream, sequence, at)
            self._card_change(bal, stream, sequence, 0, event.new_limit, at)
        elif isinstance(event, TransactionAuthorized):
            bal = self.book.card(event.card_id)
            bal.pending += event.amount
            self._touch(bal, stream, sequence, at)
            self._card_change(bal, stream, sequence, event.amount, None, at)
            self._transaction(event, stream, sequence, "authorization", None, event.merchant_id)
            return
        elif isinstance(event, TransactionVoided | TransactionExpired):
            bal = self.book.card(event.card_id)
            bal.pending -= event.released
            self._touch(bal, stream, sequence, at)
            self._card_change(bal, stream, sequence, -event.released, None, at)
            kind = "void" if isinstance(event, TransactionVoided) else "expiry"
            self._transaction(
                event, stream, sequence, kind, event.authorization_id, "", event.released
            )
            return
        elif isinstance(event, TransactionDeclined):
            self._transaction(event, stream, sequence, "decline", None, event.merchant_id)
            return
        if isinstance(event, CardFunded | BalanceAdjusted | TransactionCreated):
            kind = _POSTING_KINDS.get(type(event), "purchase")
            merchant = event.merchant_id if isinstance(event, TransactionCreated) else ""
            self._transaction(event, stream, sequence, kind, None, merchant)
            self._post(event.legs, event.card_id, event.command_id, tag, stream, sequence, at)
        elif isinstance(event, TransactionCaptured):
            bal = self.book.card(event.card_id)
            # A capture turns (part of) the hold into a posting: pending goes down by what posts.
            bal.pending -= event.amount
            self._card_change(bal, stream, sequence, -event.amount, None, at)
            self._transaction(
                event, stream, sequence, "capture", event.authorization_id, event.merchant_id
            )
            self._post(event.legs, event.card_id, event.command_id, tag, stream, sequence, at)
        elif isinstance(event, TransactionRefunded):
            self._transaction(
                event,
                stream,
                sequence,
                "refund",
                event.original_transaction_id,
                event.merchant_id,
            )
            self._post(event.legs, event.card_id, event.command_id, tag, stream, sequence, at)

    def _touch(self, bal: Balance, stream: str, sequence: int, at: datetime) -> None:
        bal.stream = stream
        bal.last_sequence = sequence
        bal.updated_at = at

    def _card_change(
        self, bal: Balance, stream: str, seq: int, delta: int, limit: int | None, at: datetime
    ) -> None:
        self.rows.card_changes.append((stream, seq, bal.account_id, bal.currency, delta, limit, at))

    def _transaction(
        self,
        event: SourceEvent,
        stream: str,
        sequence: int,
        kind: str,
        parent: str | None,
        merchant: str,
        amount: int | None = None,
    ) -> None:
        self.rows.transactions.append(
            (
                stream,
                sequence,
                event.command_id,
                kind,
                parent,
                event.card_id,
                merchant,
                amount if amount is not None else getattr(event, "amount", 0),
                getattr(event, "currency", ""),
                getattr(event, "reason", ""),
                getattr(event, "detail", ""),
                getattr(event, "description", ""),
                event_type(event),
                event.at,
                getattr(event, "expires_at", None),
            )
        )

    def _post(
        self,
        legs: tuple[Leg, ...],
        card_id: str,
        transaction_id: str,
        tag: str,
        stream: str,
        sequence: int,
        at: datetime,
    ) -> None:
        _check_legs(legs, tag, stream, sequence)
        book = self.book
        balances, touched = book.balances, book.touched
        entries = self.rows.entries
        for index, leg in enumerate(legs):
            key = (leg.account_id, leg.currency)
            bal = balances.get(key)
            if bal is None:
                bal = book.get(leg.account_id, leg.currency)
            touched[key] = bal
            bal.posted += leg.amount
            bal.entry_count += 1
            bal.stream, bal.last_sequence, bal.updated_at = stream, sequence, at
            direction = "debit" if leg.amount < 0 else "credit"
            entries.append(
                (
                    stream,
                    sequence,
                    index,
                    transaction_id,
                    card_id,
                    leg.account_id,
                    leg.amount,
                    leg.currency,
                    direction,
                    bal.posted,
                    tag,
                    at,
                )
            )


def accounts_touched(event: SourceEvent) -> set[str]:
    """Return the account ids an event may read or change (to preload their balances)."""
    found = {card_account(event.card_id)}
    for leg in getattr(event, "legs", ()):
        found.add(leg.account_id)
    return found
