"""Valid event histories for benchmarks and tests, built without the write side.

``History`` is a tiny, deliberately naive card model that emits *valid* source events (legs that
balance, holds captured/voided/expired at most up to what is open) over many cards; ``Events``
builds one card's events with the current time. Neither is the decision core: they let the read
side be measured and tested on its own.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from contracts.accounts import FUNDING, card_account, merchant_account
from contracts.events import (
    CardFunded,
    CardIssued,
    CardLimitChanged,
    LedgerEntryCreated,
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

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class _Card:
    card_id: str
    currency: str
    limit: int
    posted: int = 0
    holds: dict[str, int] = field(default_factory=dict)  # auth id -> open amount


@dataclass
class History:
    """Builds a valid event history, one call per command; ``events`` in append order."""

    events: list[SourceEvent] = field(default_factory=list)
    cards: dict[str, _Card] = field(default_factory=dict)
    refundable: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _clock: int = 0

    def _next(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def _at(self) -> datetime:
        self._clock += 1
        return T0 + timedelta(seconds=self._clock)

    def issue(self, card_id: str, currency: str = "USD", limit: int = 0) -> CardIssued:
        """Issue a card (credit when ``limit`` > 0)."""
        self.cards[card_id] = _Card(card_id, currency, limit)
        ev = CardIssued(
            card_id=card_id,
            command_id=self._next("iss"),
            at=self._at(),
            account_id=card_account(card_id),
            cardholder_name="Test Holder",
            card_type="credit" if limit else "debit",
            currency=currency,
            credit_limit=limit,
            last4="4242",
        )
        self.events.append(ev)
        return ev

    def fund(self, card_id: str, amount: int) -> None:
        """Top up a card from the funding house account."""
        c = self.cards[card_id]
        c.posted += amount
        legs = (Leg(FUNDING, -amount, c.currency), Leg(card_account(card_id), amount, c.currency))
        self.events.append(
            CardFunded(
                card_id=card_id,
                command_id=self._next("fund"),
                at=self._at(),
                amount=amount,
                currency=c.currency,
                legs=legs,
            )
        )

    def available(self, card_id: str) -> int:
        """Posted + limit - open holds."""
        c = self.cards[card_id]
        return c.posted + c.limit - sum(c.holds.values())

    def purchase(self, card_id: str, merchant: str, amount: int) -> bool:
        """Buy (or record a decline when funds are short); return whether it was accepted."""
        c = self.cards[card_id]
        tid = self._next("tx")
        if amount > self.available(card_id):
            self._decline(c, tid, "transaction.created", amount, merchant)
            return False
        c.posted -= amount
        self.refundable[tid] = (card_id, merchant, amount)
        self.events.append(
            TransactionCreated(
                card_id=card_id,
                command_id=tid,
                at=self._at(),
                merchant_id=merchant,
                amount=amount,
                currency=c.currency,
                legs=self._spend_legs(c, merchant, amount),
            )
        )
        return True

    def authorize(self, card_id: str, merchant: str, amount: int) -> str | None:
        """Place a hold; return its id (None when declined)."""
        c = self.cards[card_id]
        tid = self._next("auth")
        if amount > self.available(card_id):
            self._decline(c, tid, "transaction.authorized", amount, merchant)
            return None
        c.holds[tid] = amount
        at = self._at()
        self.events.append(
            TransactionAuthorized(
                card_id=card_id,
                command_id=tid,
                at=at,
                merchant_id=merchant,
                amount=amount,
                currency=c.currency,
                expires_at=at + timedelta(days=7),
            )
        )
        return tid

    def capture(self, card_id: str, auth_id: str, amount: int, merchant: str = "m1") -> None:
        """Capture part or all of an open hold."""
        c = self.cards[card_id]
        amount = min(amount, c.holds[auth_id])
        c.holds[auth_id] -= amount
        c.posted -= amount
        tid = self._next("cap")
        self.refundable[tid] = (card_id, merchant, amount)
        self.events.append(
            TransactionCaptured(
                card_id=card_id,
                command_id=tid,
                at=self._at(),
                authorization_id=auth_id,
                merchant_id=merchant,
                amount=amount,
                currency=c.currency,
                legs=self._spend_legs(c, merchant, amount),
            )
        )
        if c.holds[auth_id] == 0:
            del c.holds[auth_id]

    def release(self, card_id: str, auth_id: str, expired: bool = False) -> None:
        """Void (or expire) the rest of a hold."""
        c = self.cards[card_id]
        released = c.holds.pop(auth_id)
        cls = TransactionExpired if expired else TransactionVoided
        self.events.append(
            cls(
                card_id=card_id,
                command_id=self._next("rel"),
                at=self._at(),
                authorization_id=auth_id,
                released=released,
                currency=c.currency,
            )
        )

    def refund(self, original: str, amount: int) -> None:
        """Refund part or all of a purchase or capture."""
        card_id, merchant, left = self.refundable[original]
        amount = min(amount, left)
        c = self.cards[card_id]
        c.posted += amount
        self.refundable[original] = (card_id, merchant, left - amount)
        legs = (
            Leg(merchant_account(merchant), -amount, c.currency),
            Leg(card_account(card_id), amount, c.currency),
        )
        self.events.append(
            TransactionRefunded(
                card_id=card_id,
                command_id=self._next("ref"),
                at=self._at(),
                original_transaction_id=original,
                merchant_id=merchant,
                amount=amount,
                currency=c.currency,
                legs=legs,
            )
        )

    def change_limit(self, card_id: str, new_limit: int) -> None:
        """Change a credit card's limit."""
        c = self.cards[card_id]
        old, c.limit = c.limit, new_limit
        self.events.append(
            CardLimitChanged(
                card_id=card_id,
                command_id=self._next("lim"),
                at=self._at(),
                old_limit=old,
                new_limit=new_limit,
            )
        )

    def _spend_legs(self, c: _Card, merchant: str, amount: int) -> tuple[Leg, ...]:
        return (
            Leg(card_account(c.card_id), -amount, c.currency),
            Leg(merchant_account(merchant), amount, c.currency),
        )

    def _decline(self, c: _Card, tid: str, command: str, amount: int, merchant: str) -> None:
        self.events.append(
            TransactionDeclined(
                card_id=c.card_id,
                command_id=tid,
                at=self._at(),
                command_type=command,
                reason="insufficient_funds",
                amount=amount,
                currency=c.currency,
                merchant_id=merchant,
            )
        )


def busy_history(cards: int, rounds: int, currency: str = "USD") -> History:
    """A deterministic history touching every kind of money event."""
    h = History()
    for n in range(cards):
        h.issue(f"c{n}", currency, limit=5_000 if n % 2 else 0)
        h.fund(f"c{n}", 10_000)
    for r in range(rounds):
        for n in range(cards):
            card = f"c{n}"
            merchant = f"m{(n + r) % 3}"
            h.purchase(card, merchant, 100 + r)
            auth = h.authorize(card, merchant, 300)
            if auth is not None:
                if r % 3 == 0:
                    h.capture(card, auth, 200, merchant)
                    h.release(card, auth)
                elif r % 3 == 1:
                    h.release(card, auth, expired=True)
                else:
                    h.capture(card, auth, 300, merchant)
            if r % 5 == 4:
                h.fund(card, 2_000)
    return h


@dataclass
class Events:
    """Builds valid source events for one card, with increasing times."""

    card_id: str
    currency: str = "USD"
    _n: int = 0

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}-{uuid.uuid4().hex[:6]}"

    def issue(self, limit: int = 0, last4: str = "4242") -> CardIssued:
        """Issue the card (credit when ``limit`` > 0)."""
        return CardIssued(
            card_id=self.card_id,
            command_id=self._id("iss"),
            at=datetime.now(UTC),
            account_id=card_account(self.card_id),
            cardholder_name="Test Holder",
            card_type="credit" if limit else "debit",
            currency=self.currency,
            credit_limit=limit,
            last4=last4,
        )

    def fund(self, amount: int) -> CardFunded:
        """Top the card up from the funding house account."""
        return CardFunded(
            card_id=self.card_id,
            command_id=self._id("fund"),
            at=datetime.now(UTC),
            amount=amount,
            currency=self.currency,
            legs=(
                Leg(FUNDING, -amount, self.currency),
                Leg(card_account(self.card_id), amount, self.currency),
            ),
        )

    def purchase(
        self, amount: int, merchant: str = "m-1", description: str = ""
    ) -> TransactionCreated:
        """A one-step purchase."""
        return TransactionCreated(
            card_id=self.card_id,
            command_id=self._id("tx"),
            at=datetime.now(UTC),
            merchant_id=merchant,
            amount=amount,
            currency=self.currency,
            legs=(
                Leg(card_account(self.card_id), -amount, self.currency),
                Leg(merchant_account(merchant), amount, self.currency),
            ),
            description=description,
        )

    def decline(self, amount: int, merchant: str = "m-1") -> TransactionDeclined:
        """A purchase refused for insufficient funds."""
        return TransactionDeclined(
            card_id=self.card_id,
            command_id=self._id("dec"),
            at=datetime.now(UTC),
            command_type="create_transaction",
            reason="insufficient_funds",
            amount=amount,
            currency=self.currency,
            merchant_id=merchant,
        )

    def entry(self, source: TransactionCreated, stream: str, sequence: int) -> LedgerEntryCreated:
        """The ledger entry of a purchase's card leg, as the ledger's outbox publishes it."""
        return LedgerEntryCreated(
            entry_id=f"{stream}:{sequence}:0",
            transaction_id=source.command_id,
            card_id=self.card_id,
            account_id=card_account(self.card_id),
            amount=-source.amount,
            currency=self.currency,
            balance_after=0,
            event_type="transaction.created.v1",
            effective_at=source.at,
            stream=stream,
            stream_sequence=sequence,
        )
