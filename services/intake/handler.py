"""The command handler: validate, decide on exact state, append atomically, replay retries.

One command becomes one *unit* for the group-commit writer: its events on the card's family, the
first carrying compare-and-set on ``card.<id>.>`` at the version decided on. Every event names its
command (id, type tag, payload fingerprint), and a decline is an event too, so the card's own history
is the record of its commands: there is no per-command subject, and broker memory grows with cards,
not commands (docs/intake.md, idempotency). Hence:

- a retry of a command finds its record in the card's command log (recent commands, in memory) or,
  for older ids, in the command index (a projection with a position; "absent" is trusted only up
  to that position, the card's family is read above it): it replays the recorded outcome (a decline
  included), or is ALREADY_EXISTS naming the original command when the payload differs;
- two replicas deciding the same id on the same card race on the family's compare-and-set: the
  loser reloads the tail, finds the winner's record and replays it;
- a decision made on a stale view of the card (a freeze, a limit cut, another replica's purchase)
  fails the family check: reload the tail and decide again (docs/architecture.md, invariant 6),
  until the caller's deadline; ABORTED only once it has passed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, get_args

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram

from commands.decide import decide
from commands.messages import AuthorizeTransaction, Command, command_type, fingerprint
from commands.validation import validate
from contracts.codec import decode_event, decode_marker, encode
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
from contracts.events import DeclineReason, SourceEvent
from contracts.subjects import StreamNames
from eventstore import (
    EventStore,
    Expectation,
    GroupCommitWriter,
    OutgoingMessage,
    WrongLastSequence,
)
from eventstore.tracing import trace_headers
from services.intake.cards import (
    DEFAULT_BUDGET_BYTES,
    DEFAULT_PACKED_BUDGET_BYTES,
    RECENT_COMMANDS,
    CardStates,
    Recorded,
    recorded,
)
from services.intake.index import CommandIndex
from services.intake.snapshots import SNAPSHOT_EVERY
from services.observability.logs import about_command

log = logging.getLogger("jetledger.intake")

# Without a caller deadline, conflicts are retried this long before ABORTED.
DEFAULT_CONFLICT_BUDGET: Final = 30.0
# How long GetCommandOutcome waits for the command index to reach the stream's last card event.
INDEX_CATCH_UP_SECONDS: Final = 5.0
# Card states in memory: half live, half packed (services.intake.cards).
STATE_BUDGET_BYTES: Final = DEFAULT_BUDGET_BYTES + DEFAULT_PACKED_BUDGET_BYTES

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
    stream_sequence: int  # of the command's last event
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
        max_retries: int | None = None,
        conflict_budget: float = DEFAULT_CONFLICT_BUDGET,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: IntakeMetrics | None = None,
        index: CommandIndex | None = None,
        recent: int = RECENT_COMMANDS,
        snapshots: bool = True,
        snapshot_every: int = SNAPSHOT_EVERY,
        state_budget_bytes: int = STATE_BUDGET_BYTES,
    ) -> None:
        self._store = store
        self._writer = writer
        self._streams = streams
        self._subjects = streams.subjects
        self._hold_ttl = hold_ttl
        self._max_retries = max_retries  # None: retry conflicts until the deadline
        self._budget = conflict_budget
        self._clock = clock
        self._metrics = metrics
        self._index = index
        self.cards = CardStates(
            store,
            streams.subjects,
            recent=recent,
            budget_bytes=state_budget_bytes // 2,  # live states; the other half packed ones
            packed_budget_bytes=state_budget_bytes - state_budget_bytes // 2,
            snapshot_stream=streams.snapshots if snapshots else "",
            snapshot_every=snapshot_every,
        )

    async def handle(
        self, command: Command, *, deadline: float | None = None, validated: bool = False
    ) -> CommandOutcome:
        """Decide and record ``command``, or replay its recorded outcome; raise on bad input.

        ``deadline`` is a ``time.monotonic()`` instant (the caller's): conflicts are retried until
        then. ``validated`` skips validation the caller already did.
        """
        started = time.perf_counter()
        kind = command_type(command)
        with about_command(command.command_id):  # every line logged meanwhile carries the id
            try:
                result = await self._handle(command if validated else validate(command), deadline)
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
        """Return the recorded outcome of any command ever handled; ``NotFound`` if none.

        A plain read: ``replayed`` is False. Recent commands of this process answer from memory;
        the rest from the command index, once it has read up to the stream's last card event.
        """
        card_id = self.cards.card_of(command_id)
        if card_id is not None:
            record = self.cards.log(card_id).get(command_id)
            if record is not None and record.fingerprint:
                return self._outcome(record, replayed=False)
        if self._index is None:
            raise NotFound(f"no command with id {command_id!r} is known to this intake")
        give_up = time.monotonic() + INDEX_CATCH_UP_SECONDS
        while True:
            answer = await self._index.find(command_id)
            if answer.found is not None:
                return self._outcome(answer.found, replayed=False)
            later = await self._store.next_sequence(self._subjects.all_cards, answer.position)
            if later is None:
                raise NotFound(f"no command with id {command_id!r} was ever recorded")
            if time.monotonic() >= give_up:
                raise Unavailable("the command index is behind the stream; try again in a moment")
            await asyncio.sleep(0.05)

    async def _handle(self, command: Command, deadline: float | None) -> CommandOutcome:
        print_ = fingerprint(command)  # of the command as sent, before server-side defaults
        kind = command_type(command)
        if isinstance(command, AuthorizeTransaction) and command.expires_at is None:
            command = msgspec.structs.replace(command, expires_at=self._clock() + self._hold_ttl)
        card_id = command.card_id
        command_id = command.command_id
        if deadline is None:
            deadline = time.monotonic() + self._budget
        async with self.cards.locked(card_id):
            other = self.cards.card_of(command_id)
            if other is not None and other != card_id:
                first = self.cards.log(other).get(command_id)
                raise AlreadyExists(_reused(command_id, kind, other, first))
            # Decide on the cached state first: compare-and-set refuses it if the card moved, and
            # only then do we pay for reading the family's tail (docs/architecture.md, §4.3).
            fresh = False
            checked_to = 0  # ids recorded at or below this sequence were looked for already
            conflicts = 0
            while True:
                state = await (self.cards.current(card_id) if fresh else self.cards.known(card_id))
                log = self.cards.log(card_id)
                found = log.get(command_id)
                if found is None and log.horizon > checked_to:
                    if not log.surely_absent(command_id):
                        found = await self._older(
                            card_id, command_id, kind, checked_to, log.horizon
                        )
                    checked_to = log.horizon
                if found is not None:
                    return await self._replay(found, print_, kind)
                try:
                    decision = decide(state, command, self._clock(), validated=True)
                except (NotFound, AlreadyExists):
                    if not fresh:  # the cache may predate the card's issue (or another replica's)
                        fresh = True
                        continue
                    raise
                events = tuple(
                    msgspec.structs.replace(e, command_type=kind, fingerprint=print_)
                    for e in decision.events
                )
                if not events:
                    raise AssertionError(f"decide() recorded nothing for {kind}")
                try:
                    positions = await self._writer.submit(
                        self._unit(card_id, state.version, events)
                    )
                except WrongLastSequence:
                    conflicts += 1
                    if self._metrics is not None:
                        self._metrics.conflicts.inc()
                    over = self._max_retries is not None and conflicts > self._max_retries
                    if over or time.monotonic() >= deadline:
                        raise Aborted(
                            f"command {command_id!r} kept conflicting on card {card_id!r} until"
                            f" its deadline ({conflicts} attempts); it was not recorded"
                        ) from None
                    if conflicts > 2:  # replicas racing one card: spread them out a little
                        await asyncio.sleep(random.uniform(0, min(0.001 * conflicts, 0.02)))
                    fresh = True  # the card moved: read the tail we did not see, decide again
                    continue
                self.cards.applied(card_id, state, events, positions)
                return self._outcome(recorded(events[-1], positions[-1].sequence), replayed=False)

    async def _older(
        self, card_id: str, command_id: str, kind: str, above: int, upto: int
    ) -> Recorded | None:
        """Find ``command_id`` among the card's commands recorded in (above, upto]."""
        start = above
        if self._index is not None:
            answer = await self._index.find(command_id)
            if answer.found is not None:
                if answer.found.card_id != card_id:
                    raise AlreadyExists(
                        _reused(command_id, kind, answer.found.card_id, answer.found)
                    )
                return answer.found
            if answer.position >= upto:
                return None  # the index has read past every command the log forgot
            start = max(start, answer.position)
        # The index is behind (or absent): read the part of the card's history it has not seen.
        loaded = await self._store.load(self._subjects.card(card_id), after_sequence=start)
        found: Recorded | None = None
        for message in loaded.messages:
            if message.sequence > upto:
                break
            event = decode_event(message.data)
            if event.command_id == command_id:
                found = recorded(event, message.sequence)
        return found

    async def _replay(self, record: Recorded, print_: str, kind: str) -> CommandOutcome:
        if not record.fingerprint:  # written before events carried it: its marker has it
            record = await self._legacy(record)
        if record.fingerprint != print_:
            raise AlreadyExists(
                f"id {record.command_id!r} was already used by a {record.command_type} command"
                f" on card {record.card_id!r} with a different payload (this request is a {kind})"
            )
        return self._outcome(record, replayed=True)

    async def _legacy(self, record: Recorded) -> Recorded:
        stored = await self._store.last_by_subject(self._subjects.command_marker(record.command_id))
        if stored is None:
            raise Unavailable(f"the record of command {record.command_id!r} is incomplete")
        marker = decode_marker(stored.data)
        return Recorded(
            record.command_id,
            marker.command_type,
            marker.fingerprint,
            marker.card_id,
            marker.outcome,
            marker.reason,
            marker.detail,
            stored.sequence,
            marker.at,
        )

    def _unit(
        self, card_id: str, version: int, events: tuple[SourceEvent, ...]
    ) -> list[OutgoingMessage]:
        family = Expectation(self._subjects.card(card_id), version)
        traced = trace_headers()  # the RPC's span: projections and webhooks continue its trace
        return [
            OutgoingMessage(
                subject=self._subjects.card(card_id),
                data=encode(event),
                headers=traced,
                expect=family if index == 0 else None,
            )
            for index, event in enumerate(events)
        ]

    def _outcome(self, record: Recorded, *, replayed: bool) -> CommandOutcome:
        return CommandOutcome(
            command_id=record.command_id,
            command_type=record.command_type,
            card_id=record.card_id,
            outcome=record.outcome,
            reason=record.reason,
            detail=record.detail,
            stream=self._streams.source,
            stream_sequence=record.sequence,
            decided_at=record.at,
            replayed=replayed,
        )


def _reused(command_id: str, kind: str, card_id: str, first: Recorded | None) -> str:
    what = f"a {first.command_type} command" if first is not None else "a command"
    return (
        f"id {command_id!r} was already used by {what} on card {card_id!r}"
        f" (this request is a {kind} on another card)"
    )
