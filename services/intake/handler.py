"""The command handler: validate, decide on exact state, append atomically, replay retries.

One command becomes one *unit* for the group-commit writer: its events on the card's family
(the first carrying compare-and-set on ``card.<id>.>`` at the version decided on) followed by its
outcome marker on ``command.<id>`` (expected subject sequence 0). The unit is all-or-nothing, so:

- a retry of a command, however late, fails the marker check and replays the recorded outcome
  (a decline included) — or is ALREADY_EXISTS when the payload differs (docs/architecture.md, invariant 5);
- a decision made on a stale view of the card (a freeze, a limit cut, another replica's purchase)
  fails the family check: reload the tail and decide again (docs/architecture.md, invariant 6), at most
  ``max_retries`` times, then ABORTED.

A failed check names no culprit (err_code 10071 either way), so after a conflict we read the
marker: present means "retry", absent means "the card moved".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, get_args

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram

from commands.decide import decide
from commands.decision import Decision
from commands.messages import AuthorizeTransaction, Command, command_type, fingerprint
from commands.validation import validate
from contracts.codec import decode_marker, encode, event_type
from contracts.errors import (
    Aborted,
    AlreadyExists,
    Conflict,
    Declined,
    InvalidArgument,
    LedgerError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from contracts.events import CommandRecorded, DeclineReason, SourceEvent
from contracts.subjects import StreamNames
from eventstore import (
    EventStore,
    Expectation,
    GroupCommitWriter,
    OutgoingMessage,
    WrongLastSequence,
)
from eventstore.tracing import trace_headers
from services.intake.cards import CardStates
from services.observability.logs import about_command

log = logging.getLogger("jetledger.intake")

# Latency buckets reach well below a millisecond: a group-committed append is ~1-3 ms here.
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


DECLINE_REASONS: Final = frozenset(get_args(DeclineReason))
# The outcome label of a command that raised: one of these, never an exception's class name.
_ERROR_OUTCOMES: Final = (
    (InvalidArgument, "invalid_argument"),
    (NotFound, "not_found"),
    (AlreadyExists, "already_exists"),
    (Conflict, "conflict"),
    (Aborted, "aborted"),
    (Unavailable, "unavailable"),
    (Unauthenticated, "unauthenticated"),
    (PermissionDenied, "permission_denied"),
    (Declined, "declined_error"),
)


def error_outcome(exc: BaseException) -> str:
    """The bounded ``outcome`` label of a command that raised ``exc``."""
    for kind, label in _ERROR_OUTCOMES:
        if isinstance(exc, kind):
            return label
    return "error"


def decline_reason(reason: str) -> str:
    """The bounded ``reason`` label of a decline (``other`` for a reason this build lacks)."""
    return reason if reason in DECLINE_REASONS else "other"


class IntakeMetrics:
    """Prometheus metrics of command intake (no card or account ids in labels)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.commands = Counter(
            "jetledger_commands_total",
            "Commands handled, by type and outcome",
            ["command_type", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "jetledger_command_seconds",
            "Time to decide and durably append a command",
            ["command_type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.conflicts = Counter(
            "jetledger_command_conflicts_total",
            "Compare-and-set conflicts that made a command decide again",
            registry=registry,
        )
        self.declines = Counter(
            "jetledger_command_declines_total",
            "Commands declined when first decided, by type and reason (a bounded set)",
            ["command_type", "reason"],
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """The recorded outcome of one command, as first decided or as replayed for a retry."""

    command_id: str
    command_type: str
    card_id: str
    outcome: str  # "accepted" | "declined"
    reason: str
    detail: str
    stream: str
    stream_sequence: int  # of the outcome marker: the last message of the command's batch
    decided_at: datetime
    replayed: bool = False

    @property
    def accepted(self) -> bool:
        return self.outcome == "accepted"


class CommandHandler:
    """Decides and appends commands for many cards; safe to run in several replicas at once."""

    def __init__(
        self,
        store: EventStore,
        writer: GroupCommitWriter,
        streams: StreamNames,
        *,
        hold_ttl: timedelta = timedelta(days=7),
        max_retries: int = 8,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: IntakeMetrics | None = None,
    ) -> None:
        self._store = store
        self._writer = writer
        self._streams = streams
        self._subjects = streams.subjects
        self._hold_ttl = hold_ttl
        self._max_retries = max_retries
        self._clock = clock
        self._metrics = metrics
        self.cards = CardStates(store, streams.subjects)

    async def handle(self, command: Command) -> CommandOutcome:
        """Decide and record ``command``, or replay its recorded outcome; raise on bad input."""
        started = time.perf_counter()
        kind = command_type(command)
        with about_command(command.command_id):  # every line logged meanwhile carries the id
            try:
                result = await self._handle(validate(command))
            except LedgerError as exc:
                if self._metrics is not None:
                    self._metrics.commands.labels(kind, error_outcome(exc)).inc()
                raise
            except Exception as exc:
                if self._metrics is not None:
                    self._metrics.commands.labels(kind, error_outcome(exc)).inc()
                log.exception("command failed", extra={"command_type": kind})
                raise
            if result.outcome == "declined" and not result.replayed:
                log.info(
                    "command declined",
                    extra={
                        "command_type": kind,
                        "reason": result.reason,
                        "card_id": command.card_id,
                    },
                )
        if self._metrics is not None:
            label = "replayed" if result.replayed else result.outcome
            self._metrics.commands.labels(kind, label).inc()
            if label == "declined":
                self._metrics.declines.labels(kind, decline_reason(result.reason)).inc()
            self._metrics.latency.labels(kind).observe(time.perf_counter() - started)
        return result

    async def outcome_of(self, command_id: str) -> CommandOutcome:
        """Return the recorded outcome of any command ever handled; ``NotFound`` if none."""
        found = await self._marker(command_id)
        if found is None:
            raise NotFound(f"no command with id {command_id!r} was ever recorded")
        marker, sequence = found
        return self._from_marker(marker, sequence, replayed=True)

    async def _handle(self, command: Command) -> CommandOutcome:
        print_ = fingerprint(command)  # of the command as sent, before server-side defaults
        if isinstance(command, AuthorizeTransaction) and command.expires_at is None:
            command = msgspec.structs.replace(command, expires_at=self._clock() + self._hold_ttl)
        card_id = command.card_id
        async with self.cards.locked(card_id):
            # Decide on the cached state first: compare-and-set refuses it if the card moved, and
            # only then do we pay for reading the family's tail (docs/architecture.md, §4.3).
            fresh = False
            for _ in range(self._max_retries + 1):
                state = await (self.cards.current(card_id) if fresh else self.cards.known(card_id))
                try:
                    decision = decide(state, command, self._clock())
                except (NotFound, AlreadyExists):
                    # An IssueCard retried after success sees its own card: replay, not an error.
                    replay = await self._replay(command, print_)
                    if replay is not None:
                        return replay
                    if not fresh:  # the cache may predate the card's issue (or another replica's)
                        fresh = True
                        continue
                    raise
                marker = self._marker_for(command, print_, decision)
                unit = self._unit(command, state.version, decision.events, marker)
                try:
                    positions = await self._writer.submit(unit)
                except WrongLastSequence:
                    replay = await self._replay(command, print_)
                    if replay is not None:
                        return replay
                    if self._metrics is not None:
                        self._metrics.conflicts.inc()
                    fresh = True  # the card moved: read the tail we did not see, decide again
                    continue
                self.cards.applied(card_id, state, decision.events, positions)
                return self._from_marker(marker, positions[-1].sequence, replayed=False)
        raise Aborted(
            f"command {command.command_id!r} kept conflicting on card {card_id!r} "
            f"after {self._max_retries} retries"
        )

    def _marker_for(self, command: Command, print_: str, decision: Decision) -> CommandRecorded:
        return CommandRecorded(
            command_id=command.command_id,
            command_type=command_type(command),
            fingerprint=print_,
            outcome=decision.outcome,
            card_id=command.card_id,
            at=_decided_at(decision.events, self._clock),
            reason=decision.reason,
            detail=decision.detail,
            event_types=tuple(event_type(e) for e in decision.events),
        )

    def _unit(
        self,
        command: Command,
        version: int,
        events: tuple[SourceEvent, ...],
        marker: CommandRecorded,
    ) -> list[OutgoingMessage]:
        family = Expectation(self._subjects.card_family(command.card_id), version)
        traced = trace_headers()  # the RPC's span: projections and webhooks continue its trace
        unit = [
            OutgoingMessage(
                subject=self._subjects.card_event(command.card_id, event),
                data=encode(event),
                headers=traced,
                expect=family if index == 0 else None,
            )
            for index, event in enumerate(events)
        ]
        marker_subject = self._subjects.command_marker(command.command_id)
        unit.append(
            OutgoingMessage(
                subject=marker_subject,
                data=encode(marker),
                headers=traced,
                expect=Expectation(marker_subject, 0),
            )
        )
        return unit

    async def _marker(self, command_id: str) -> tuple[CommandRecorded, int] | None:
        stored = await self._store.last_by_subject(self._subjects.command_marker(command_id))
        if stored is None:
            return None
        return decode_marker(stored.data), stored.sequence

    async def _replay(self, command: Command, print_: str) -> CommandOutcome | None:
        found = await self._marker(command.command_id)
        if found is None:
            return None
        marker, sequence = found
        if marker.fingerprint != print_:
            raise AlreadyExists(
                f"id {command.command_id!r} was already used for a different "
                f"{marker.command_type} command (on card {marker.card_id!r})"
            )
        return self._from_marker(marker, sequence, replayed=True)

    def _from_marker(
        self, marker: CommandRecorded, sequence: int, *, replayed: bool
    ) -> CommandOutcome:
        return CommandOutcome(
            command_id=marker.command_id,
            command_type=marker.command_type,
            card_id=marker.card_id,
            outcome=marker.outcome,
            reason=marker.reason,
            detail=marker.detail,
            stream=self._streams.source,
            stream_sequence=sequence,
            decided_at=marker.at,
            replayed=replayed,
        )


def _decided_at(events: tuple[SourceEvent, ...], clock: Callable[[], datetime]) -> datetime:
    return events[0].at if events else clock()
