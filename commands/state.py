"""The state a card's commands are decided on: lifecycle, posted balance, holds and postings.

Amounts are signed minor units in the card's currency. ``posted`` is the sum of the card account's
legs: positive is money the ledger owes the cardholder, negative is what a credit card owes.

``version`` is the stream sequence of the last event applied, as given by the shell when it calls
``evolve(state, event, sequence)``; it is the compare-and-set value for the card's subject family.
A fold without sequences leaves it at 0 (pure tests, ``verify``).

States are immutable: ``evolve`` copies the one mapping an event touches. So that a card's cost
does not grow with its age, a state keeps only what decisions need (docs/intake.md, "What a card
remembers"):

- every open hold (a hold ends by capture, void or expiry, and the sweeper expires lapsed ones);
- the last ``REFUNDABLE_POSTINGS`` purchases and captures, refundable up to their amount: the
  refund window is counted in postings, not in time, so it is deterministic in a fold;
- the last ``CLOSED_HOLDS_KEPT`` ended holds, to answer a late capture or void exactly;
- the totals (``posted``, and ``held``: what the open holds still hold) and the lifecycle.

An older posting or ended hold is forgotten: a refund of it is ``transaction_not_found``, a
capture or void of it ``authorization_not_found``. Per event, ``evolve`` copies at most one
bounded mapping (~1–2 µs at 128 entries).

``pending`` is O(1) while no open hold has lapsed: ``held`` and ``next_expiry`` (the earliest
``expires_at`` of the open holds, or earlier) are kept by ``evolve``, and only a decision at or
after ``next_expiry`` (a lapsed hold the sweeper has not expired yet) sums the holds. Summing was
~13 µs a decision for a card with 42 open holds, where a long soak leaves them. A state decoded
from elsewhere (a snapshot) gets both from ``with_totals``, never from the wire.

None of these structs is tracked by Python's cycle collector (``gc=False``): they hold only strings,
numbers, datetimes and dicts of each other, never a cycle, and a process holding 100,000 cards
would otherwise make every full collection walk millions of objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final, Literal

import msgspec

from contracts.events import CardType

REFUNDABLE_POSTINGS: Final = 128  # purchases and captures a refund may still refer to, per card
CLOSED_HOLDS_KEPT: Final = 128  # ended holds remembered to answer late captures and voids exactly

CardStatus = Literal["active", "frozen", "closed"]
HoldEnd = Literal["captured", "voided", "expired"]


class Hold(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An open authorization: money set aside for a merchant until captured, voided or expired."""

    merchant_id: str
    amount: int  # as authorized
    captured: int = 0  # sum of its captures so far
    expires_at: datetime

    @property
    def remaining(self) -> int:
        """What is still held (and may still be captured)."""
        return self.amount - self.captured

    def lapsed(self, now: datetime) -> bool:
        """Tell whether the hold has expired at ``now`` (expiry is inclusive: at ``expires_at``)."""
        return now >= self.expires_at


class ClosedHold(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An authorization that no longer holds anything, and why (to answer captures exactly)."""

    merchant_id: str
    amount: int
    captured: int
    ended: HoldEnd


class Posting(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A posted purchase or capture, refundable up to its amount."""

    merchant_id: str
    amount: int
    refunded: int = 0

    @property
    def refundable(self) -> int:
        """What may still be refunded."""
        return self.amount - self.refunded


class CardState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Everything ``decide`` needs to know about one card, folded from its events."""

    exists: bool = False
    card_id: str = ""
    account_id: str = ""
    status: CardStatus = "active"
    card_type: CardType = "debit"
    currency: str = ""
    credit_limit: int = 0  # 0 for debit and prepaid cards
    cardholder_name: str = ""  # for GetCard answers; decisions never read it
    last4: str = ""  # the only digits of the PAN that exist anywhere
    posted: int = 0
    holds: Mapping[str, Hold] = {}  # open authorizations by authorization id
    held: int = 0  # sum of ``remaining`` over ``holds``, lapsed or not
    next_expiry: datetime | None = None  # no later than any ``expires_at`` in ``holds``; None: none
    closed_holds: Mapping[str, ClosedHold] = {}  # the last CLOSED_HOLDS_KEPT, oldest first
    postings: Mapping[str, Posting] = {}  # the last REFUNDABLE_POSTINGS, by transaction id
    version: int = 0  # stream sequence of the last event applied (0: none, or not given)
    last_at: datetime | None = None  # latest ``at`` of the events applied: the card's clock

    def pending(self, now: datetime) -> int:
        """Return the sum held by authorizations that have not lapsed at ``now``."""
        if self.next_expiry is None or now < self.next_expiry:
            return self.held  # no open hold has lapsed
        return sum(hold.remaining for hold in self.holds.values() if not hold.lapsed(now))

    def available(self, now: datetime) -> int:
        """Return what the cardholder may spend at ``now``: posted + credit limit − pending."""
        return self.posted + self.credit_limit - self.pending(now)

    def clock(self, now: datetime) -> datetime:
        """Return the instant to decide at: ``now``, but never before an event already applied.

        Replicas' clocks differ. If one replica spent money freed by a lapsed hold, a replica whose
        clock is behind must not see that hold alive again (and let it be captured): per card,
        time only moves forward along the stream.
        """
        return now if self.last_at is None or now >= self.last_at else self.last_at


def with_totals(state: CardState) -> CardState:
    """Return ``state`` with ``held`` and ``next_expiry`` computed from its open holds."""
    holds = state.holds.values()
    return msgspec.structs.replace(
        state,
        held=sum(hold.remaining for hold in holds),
        next_expiry=min((hold.expires_at for hold in holds), default=None),
    )


EMPTY: CardState = CardState()
