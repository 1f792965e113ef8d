"""Every NATS subject jetledger uses is built here, and nowhere else (CONTRIBUTING.md, convention 6).

Subjects go broad → narrow. With the default empty prefix:

- ``card.<card_id>`` — every event of one card, lifecycle (issued, frozen, funded …) and money
  (transaction created, authorized, captured …) alike; the event's kind is its ``type`` tag
- ``command.<command_id>`` — the legacy outcome marker of a command (notification preferences)
- ``ledger.entry_created.<account_id>`` — derived journal entries (ledger projection outbox)
- ``snapshot.card.<card_id>`` — the intake's snapshot of a card's decision state (its own stream,
  ``<source>_SNAPSHOTS``, one message kept per subject; derived, never the source of truth)
- ``notify.card.<card_id>.preferences_set|webhook_set|webhook_removed`` — a card's notification
  preferences; ``notify.default.…`` — the operator's global default (source stream)

A card's lifecycle and money events share one literal subject, which is also its compare-and-set
subject, so a decision is never appended after a card event it did not see (docs/architecture.md,
invariant 6). One *literal* subject per card, not a family of per-kind subjects under a wildcard:
nats-server answers a literal subject from its per-subject index in constant time, while a wildcard
read over a stream with many subjects scans every block after the start (docs/eventstore.md,
"One subject per card").

The prefix (e.g. ``"t1a2b."``) lets tests and tenants run isolated streams on one server; the
stream name travels with it in ``StreamNames``.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.events import NotifyEvent
from contracts.ids import check_id


@dataclass(frozen=True, slots=True)
class Subjects:
    """Builds subjects under one prefix. ``prefix`` is empty or ends with a dot."""

    prefix: str = ""

    def __post_init__(self) -> None:
        if self.prefix and (not self.prefix.endswith(".") or " " in self.prefix):
            raise ValueError(f"subject prefix must be empty or end with '.', got {self.prefix!r}")

    # -- source stream ---------------------------------------------------------------------------

    def card(self, card_id: str) -> str:
        """The subject of every event of one card, and its compare-and-set subject."""
        return f"{self.prefix}card.{check_id(card_id, 'card_id')}"

    def command_marker(self, command_id: str) -> str:
        """The outcome marker subject of one command id."""
        return f"{self.prefix}command.{check_id(command_id, 'command_id')}"

    def card_snapshot(self, card_id: str) -> str:
        """The snapshot subject of one card (snapshots stream; only the latest is kept)."""
        return f"{self.prefix}snapshot.card.{check_id(card_id, 'card_id')}"

    def snapshot_stream_subjects(self) -> list[str]:
        """The subjects the snapshots stream captures."""
        return [f"{self.prefix}snapshot.>"]

    @property
    def all_cards(self) -> str:
        """Every card's events (what the projections consume); one subject per card, so the
        stream's subject index is also the card directory."""
        return f"{self.prefix}card.*"

    @property
    def legacy_cards(self) -> str:
        """The per-kind card subjects of the first layout (``card.<id>.issued`` …): a stream
        that holds any is refused (``EventStore.ensure_streams``)."""
        return f"{self.prefix}card.*.>"

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
        """Return the card id token of a ``card.<card_id>`` subject."""
        tokens = subject[len(self.prefix) :].split(".")
        if len(tokens) != 2 or tokens[0] != "card" or not subject.startswith(self.prefix):
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

    @property
    def snapshots(self) -> str:
        """The stream of card snapshots (``<source>_SNAPSHOTS``): a cache, rebuildable any time."""
        return f"{self.source}_SNAPSHOTS"
