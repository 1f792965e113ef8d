"""An independent fold of the stream into per-account balances and entry checksums (for verify).

Deliberately shares nothing with the projector's ``rows``/``store`` code or its SQL: it reads
the events' own legs and hold amounts and keeps plain dictionaries, so a bug in the projector
shows up as a difference instead of being reproduced. ``checksum_line`` is the one format both
sides hash: the fold hashes what it derives, ``verify`` hashes what Postgres holds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from contracts import events as ev

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(at: datetime) -> int:
    """Return a timestamp as integer microseconds since the epoch (exact, no float)."""
    return (at - _EPOCH) // timedelta(microseconds=1)


def checksum_line(
    stream: str,
    sequence: int,
    leg: int,
    transaction_id: str,
    amount: int,
    currency: str,
    balance_after: int,
    effective_at: datetime,
) -> bytes:
    """Return the canonical bytes of one entry, as hashed into its account's checksum."""
    return (
        f"{stream}:{sequence}:{leg}|{transaction_id}|{amount}|{currency}|{balance_after}|"
        f"{micros(effective_at)}\n"
    ).encode()


@dataclass
class AccountFold:
    """What the stream says about one account in one currency."""

    posted: int = 0
    pending: int = 0
    credit_limit: int = 0
    is_card: bool = False
    entries: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    @property
    def available(self) -> int:
        """Posted + limit - pending for cards; posted for everyone else."""
        return self.posted + self.credit_limit - self.pending if self.is_card else self.posted

    @property
    def checksum(self) -> str:
        """Hex digest of every entry line of this account, in stream order."""
        return self.digest.hexdigest()


@dataclass
class StreamFold:
    """Folds source events of one stream, in order, into ``accounts``."""

    stream: str
    accounts: dict[tuple[str, str], AccountFold] = field(default_factory=dict)
    card_accounts: dict[str, tuple[str, str]] = field(default_factory=dict)
    events: int = 0
    position: int = 0

    def feed(self, sequence: int, event: ev.SourceEvent) -> None:
        """Fold one event stored at ``sequence``."""
        self.events += 1
        self.position = sequence
        match event:
            case ev.CardIssued(account_id=account, currency=currency, credit_limit=limit):
                self.card_accounts[event.card_id] = (account, currency)
                acct = self._account(account, currency)
                acct.is_card = True
                acct.credit_limit = limit
            case ev.CardLimitChanged(new_limit=limit):
                self._card(event.card_id).credit_limit = limit
            case ev.TransactionAuthorized(amount=amount):
                self._card(event.card_id).pending += amount
            case ev.TransactionVoided(released=released) | ev.TransactionExpired(released=released):
                self._card(event.card_id).pending -= released
            case ev.TransactionCaptured(amount=amount, legs=legs):
                self._card(event.card_id).pending -= amount
                self._legs(sequence, event.command_id, legs, event.at)
            case (
                ev.CardFunded(legs=legs)
                | ev.BalanceAdjusted(legs=legs)
                | ev.TransactionCreated(legs=legs)
                | ev.TransactionRefunded(legs=legs)
            ):
                self._legs(sequence, event.command_id, legs, event.at)
            case _:
                pass  # freezes, unfreezes, closes and declines move no money

    def _account(self, account: str, currency: str) -> AccountFold:
        return self.accounts.setdefault((account, currency), AccountFold())

    def _card(self, card_id: str) -> AccountFold:
        return self._account(*self.card_accounts[card_id])

    def _legs(
        self, sequence: int, transaction_id: str, legs: tuple[ev.Leg, ...], at: datetime
    ) -> None:
        for index, leg in enumerate(legs):
            acct = self._account(leg.account_id, leg.currency)
            acct.posted += leg.amount
            acct.entries += 1
            acct.digest.update(
                checksum_line(
                    self.stream,
                    sequence,
                    index,
                    transaction_id,
                    leg.amount,
                    leg.currency,
                    acct.posted,
                    at,
                )
            )

    def totals(self) -> dict[str, int]:
        """Σ posted per currency over every account (0 when the books balance)."""
        out: dict[str, int] = {}
        for (_, currency), acct in self.accounts.items():
            out[currency] = out.get(currency, 0) + acct.posted
        return out
