"""The hold sweeper: appends ``transaction.expired`` for holds whose time has passed.

Decisions never wait for it (an expired hold stops counting the moment it lapses, docs/architecture.md, §4.3);
the sweeper exists so projections and notifications *see* the expiry. It reads the cards' events
incrementally (all of them: a card's events share one subject, so the kind is in the event, not in
the subject), keeps the hold events, and when a hold is due it submits ``ExpireAuthorization``
under a deterministic command id, so several replicas sweeping at once record it exactly once.

It remembers open holds only: the captures, voids and expiries it reads end them, so its memory
follows the holds open now, not every hold ever authorized (a soak of a million commands grew the
transaction service by ~6 MB per 100,000 commands before).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from commands.decide import expired_holds
from commands.messages import ExpireAuthorization, sweeper_command_id
from contracts.codec import decode_event
from contracts.errors import LedgerError
from contracts.events import (
    TransactionAuthorized,
    TransactionCaptured,
    TransactionExpired,
    TransactionVoided,
)
from contracts.subjects import Subjects
from eventstore import EventStore
from services.intake import CommandHandler

log = logging.getLogger("jetledger.sweeper")


class HoldSweeper:
    """Finds due holds and records their expiry."""

    def __init__(
        self,
        store: EventStore,
        handler: CommandHandler,
        subjects: Subjects,
        *,
        interval: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._handler = handler
        self._subjects = subjects
        self._interval = interval
        self._clock = clock
        self._due: list[tuple[datetime, str]] = []  # (expires_at, authorization_id), a heap
        self._open: dict[str, tuple[str, int]] = {}  # authorization_id -> (card_id, remaining)
        self._next_sequence = 1
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run in the background until ``stop``."""
        self._task = asyncio.create_task(self._run(), name="hold-sweeper")

    async def stop(self) -> None:
        """Stop the background loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except LedgerError:
                log.exception("hold sweep failed; retrying next tick")
            await asyncio.sleep(self._interval)

    async def sweep(self) -> int:
        """Read new hold events, expire the due holds; return how many expiries were recorded."""
        filters = [self._subjects.all_cards]
        # Read only what was appended since the last sweep, not since the last hold.
        end = await self._store.last_sequence()
        if end >= self._next_sequence:
            replay = self._store.replay(self._next_sequence, filters)
            async with contextlib.aclosing(replay) as messages:
                async for message in messages:
                    if message.sequence > end:
                        break  # appended after we looked: the next sweep reads it
                    self._read(decode_event(message.data))
            self._next_sequence = end + 1
            self._compact()
        now = self._clock()
        recorded = 0
        while self._due and self._due[0][0] <= now:
            _, authorization_id = heapq.heappop(self._due)
            held = self._open.pop(authorization_id, None)
            if held is None:
                continue  # ended since it was authorized
            card_id = held[0]
            state = await self._handler.cards.current(card_id)
            if authorization_id not in expired_holds(state, now):
                continue  # captured in full, voided, or already expired
            outcome = await self._handler.handle(
                ExpireAuthorization(
                    command_id=sweeper_command_id(authorization_id),
                    card_id=card_id,
                    authorization_id=authorization_id,
                )
            )
            recorded += int(outcome.accepted and not outcome.replayed)
        return recorded

    @property
    def open_holds(self) -> int:
        """Holds this sweeper is waiting on (authorized, not yet ended as far as it has read)."""
        return len(self._open)

    def _read(self, event: object) -> None:
        if isinstance(event, TransactionAuthorized):
            self._open[event.command_id] = (event.card_id, event.amount)
            heapq.heappush(self._due, (event.expires_at, event.command_id))
        elif isinstance(event, TransactionCaptured):
            held = self._open.get(event.authorization_id)
            if held is not None:
                remaining = held[1] - event.amount
                if remaining > 0:
                    self._open[event.authorization_id] = (held[0], remaining)
                else:
                    del self._open[event.authorization_id]
        elif isinstance(event, TransactionVoided | TransactionExpired):
            self._open.pop(event.authorization_id, None)

    def _compact(self) -> None:
        """Drop the due entries of ended holds once they outnumber the open ones."""
        if len(self._due) > 2 * len(self._open) + 1024:
            self._due = [entry for entry in self._due if entry[1] in self._open]
            heapq.heapify(self._due)
