"""Every NATS subject jetledger uses is built here, and nowhere else (CONTRIBUTING.md, convention 6).

Subjects go broad → narrow. With the default empty prefix:

- ``card.<card_id>.issued|frozen|unfrozen|limit_changed|closed|funded|adjusted`` — card lifecycle
- ``card.<card_id>.transaction.created|authorized|captured|voided|refunded|expired|declined`` —
  the money events of the card's account
- ``command.<command_id>`` — the idempotency/outcome marker of a command (one message, ever)
- ``ledger.entry_created.<account_id>`` — derived journal entries (ledger projection outbox)
- ``notify.card.<card_id>.preferences_set|webhook_set|webhook_removed`` — a card's notification
  preferences; ``notify.default.…`` — the operator's global default (source stream)

A card's lifecycle and money events share one compare-and-set family, ``card.<card_id>.>``, so a
decision is never appended after a card event it did not see (docs/architecture.md, invariant 6).

The prefix (e.g. ``"t1a2b."``) lets tests and tenants run isolated streams on one server; the
stream name travels with it in ``StreamNames``.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.events import CardIssued, Event, NotifyEvent
from contracts.ids import check_id


@dataclass(frozen=True, slots=True)
class Subjects:
    """Builds subjects under one prefix. ``prefix`` is empty or ends with a dot."""

    prefix: str = ""

    def __post_init__(self) -> None:
        if self.prefix and (not self.prefix.endswith(".") or " " in self.prefix):
            raise ValueError(f"subject prefix must be empty or end with '.', got {self.prefix!r}")

    # -- source stream ---------------------------------------------------------------------------

    def card_family(self, card_id: str) -> str:
        """The compare-and-set family of one card: all its lifecycle and money events."""
        return f"{self.prefix}card.{check_id(card_id, 'card_id')}.>"

    def card_event(self, card_id: str, event: Event | type[Event]) -> str:
        """The subject one event of a card is stored on."""
        return f"{self.prefix}card.{check_id(card_id, 'card_id')}.{event.subject_suffix}"

    def command_marker(self, command_id: str) -> str:
        """The outcome marker subject of one command id."""
        return f"{self.prefix}command.{check_id(command_id, 'command_id')}"

    @property
    def all_cards(self) -> str:
        """Every card lifecycle and money event (what the ledger projection consumes)."""
        return f"{self.prefix}card.>"

    @property
    def all_issued(self) -> str:
        """The ``issued`` event of every card: one subject per card (the card directory)."""
        return f"{self.prefix}card.*.{CardIssued.subject_suffix}"

    @property
    def all_commands(self) -> str:
        return f"{self.prefix}command.>"

    def notify_event(self, card_id: str, event: NotifyEvent | type[NotifyEvent]) -> str:
        """The subject of a preference event: one card's, or the operator default's (``""``)."""
        scope = f"card.{check_id(card_id, 'card_id')}" if card_id else "default"
        return f"{self.prefix}notify.{scope}.{event.subject_suffix}"

    @property
    def all_notify(self) -> str:
        """Every notification-preference event (cards and the operator default)."""
        return f"{self.prefix}notify.>"

    def source_stream_subjects(self) -> list[str]:
        """The subjects the source stream captures."""
        return [self.all_cards, self.all_commands, self.all_notify]

    # -- derived stream ---------------------------------------------------------------------------

    def entry_created(self, account_id: str) -> str:
        """The derived ``ledger.entry_created`` subject of one account."""
        return f"{self.prefix}ledger.entry_created.{account_id}"

    @property
    def all_entries(self) -> str:
        return f"{self.prefix}ledger.entry_created.>"

    def derived_stream_subjects(self) -> list[str]:
        return [f"{self.prefix}ledger.>"]

    # -- parsing ----------------------------------------------------------------------------------

    def card_id_of(self, subject: str) -> str:
        """Return the card id token of a ``card.<card_id>.…`` subject."""
        tokens = subject[len(self.prefix) :].split(".")
        if len(tokens) < 3 or tokens[0] != "card" or not subject.startswith(self.prefix):
            raise ValueError(f"not a card subject: {subject!r}")
        return tokens[1]


@dataclass(frozen=True, slots=True)
class StreamNames:
    """The names of the streams one deployment (or one test) uses, and its subject builder.

    Partition-ready (docs/architecture.md, §5): positions always carry the stream name they refer to.
    """

    source: str = "LEDGER"
    derived: str = "LEDGER_DERIVED"
    subjects: Subjects = Subjects()
