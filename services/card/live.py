"""Every card's state, kept up to date by following the stream: what ``GetCard`` answers from.

Before, ``GetCard`` read the card's events appended since its last call with a filtered direct get.
nats-server pays for such a read with the span of stream it scans, not with the events it returns,
so on a busy stream each lookup cost more the longer the card had not been asked about: at 1,000
cards the card service answered ``GetCard`` in more than 2 s and the intake's lookups failed.

Now one reader (``eventstore.reader``, through ``EventStore.replay_batches``) follows the source
stream from its start, filters card events here, and folds them into per-card states. It is the
only writer of these states and sees every card event in stream order, so a state is exact as of
the reader's position. ``GetCard`` asks the stream for the card's last sequence (one direct get
by subject, cheap whatever the history), waits until the reader has passed it, and answers: read
your writes, without re-reading history.

A followed state is lean: ``GetCard`` answers the lifecycle, ``posted`` and the open holds, so the
refundable postings and ended holds a decision needs are dropped after each fold (~0.75 KB a card
instead of up to ~70 KB for a busy one). Memory is bounded by ``budget_bytes`` (estimated as in
``services.intake.cards``): 100,000 cards with a few open holds each fit the default. A card pushed
out by the budget is no longer followed; its lookups fall back to the exact tail read. The
caller also falls back when the reader is more than ``wait`` behind (a restart catching up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Final

import msgspec

from commands.evolve import evolve
from commands.state import EMPTY, CardState
from contracts.codec import decode_event
from contracts.subjects import Subjects
from eventstore import EventStore, StoredMessage
from eventstore.integrity import Verdict, check_stored
from services.intake.cards import state_bytes

log = logging.getLogger("jetledger.card.live")

RETRY_AFTER: Final = 1.0  # seconds before the reader resumes after an error
DEFAULT_BUDGET_BYTES: Final = 256 * 1024 * 1024


class LiveCards:
    """Card states folded from the stream by one follower, within a byte budget."""

    def __init__(
        self, store: EventStore, subjects: Subjects, budget_bytes: int = DEFAULT_BUDGET_BYTES
    ) -> None:
        self._store = store
        self._subjects = subjects
        self._prefix = f"{subjects.prefix}card."
        self._budget = budget_bytes
        self._bytes = 0
        self._states: OrderedDict[str, CardState] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._untracked: set[str] = set()  # pushed out by the budget: no longer followed
        self.position = 0  # every message up to here has been applied
        self._tick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._states)

    @property
    def estimated_bytes(self) -> int:
        return self._bytes

    def start(self) -> None:
        """Start following the stream (from its first message)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow(), name="live-cards")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def state(self, card_id: str, at_least: int, wait: float) -> CardState | None:
        """The card's state once the reader has passed ``at_least``; None to fall back.

        None when the card is not followed (budget) or the reader is still behind after ``wait``.
        """
        if card_id in self._untracked:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.position < at_least:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            tick = self._tick
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tick.wait(), remaining)
        if card_id in self._untracked:
            return None
        state = self._states.get(card_id)
        if state is not None:
            self._states.move_to_end(card_id)
        return state if state is not None else EMPTY

    async def _follow(self) -> None:
        filters = [self._subjects.all_cards]
        while True:
            try:
                # Filtered here, not by the server: card events are most of the stream.
                batches = self._store.replay_batches(
                    self.position, filters, follow=True, server_filter=False
                )
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        for message in batch.messages:
                            self._apply(message)
                        self.position = max(self.position, batch.last_sequence)
                        tick, self._tick = self._tick, asyncio.Event()
                        tick.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("card follower stopped; resuming", exc_info=True)
                await asyncio.sleep(RETRY_AFTER)

    def _apply(self, message: StoredMessage) -> None:
        if not message.subject.startswith(self._prefix):
            return
        try:
            card_id = self._subjects.card_id_of(message.subject)
        except ValueError:
            return
        if card_id in self._untracked:
            return
        state = self._states.get(card_id, EMPTY)
        if message.sequence <= state.version:
            return  # seen already (the reader resumed from an earlier position)
        keyring = self._store.keyring
        if keyring is not None and check_stored(keyring, message) is not Verdict.VALID:
            # A forged or altered event: never folded here; the exact read refuses the card.
            log.warning("card event fails its MAC", extra={"sequence": message.sequence})
            self._forget(card_id)
            return
        try:
            state = evolve(state, decode_event(message.data), message.sequence)
        except Exception:
            # Not ours to judge (verify reports it): stop following this card, answer it exactly.
            log.warning("cannot fold a card event", extra={"sequence": message.sequence})
            self._forget(card_id)
            return
        if state.postings or state.closed_holds:  # what decisions need, GetCard does not
            state = msgspec.structs.replace(state, postings={}, closed_holds={})
        size = state_bytes(state)
        self._bytes += size - self._sizes.get(card_id, 0)
        self._sizes[card_id] = size
        self._states[card_id] = state
        self._states.move_to_end(card_id)
        while self._bytes > self._budget and len(self._states) > 1:
            self._forget(next(iter(self._states)))

    def _forget(self, card_id: str) -> None:
        """Stop following a card: its lookups take the exact tail read from now on."""
        self._states.pop(card_id, None)
        self._bytes -= self._sizes.pop(card_id, 0)
        self._untracked.add(card_id)
