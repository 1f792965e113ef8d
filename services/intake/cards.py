"""Per-card decision state, kept in memory and brought up to date from the card's stream family.

The cache is an optimisation only: every append is compare-and-set on the card's family
(``card.<id>.>``) at the cached version, so a stale entry costs one conflict and a tail reload,
never a wrong decision (docs/architecture.md, §4.3).

Memory is bounded twice: at most ``capacity`` cards, and at most ``budget_bytes`` of estimated
state (``state_bytes``: a fixed part plus one share per open hold, refundable posting and ended
hold, all of which are bounded per card by ``commands.state``). Least recently used cards leave
first; a card that left is loaded again from its family when it is next used.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final

from commands.evolve import evolve
from commands.state import EMPTY, CardState
from contracts.codec import decode_event
from contracts.events import SourceEvent
from contracts.subjects import Subjects
from eventstore import EventStore, Position

STATE_BASE_BYTES: Final = 1_200  # a state, its strings and its LRU slot (measured: ~1.1 KB)
ENTRY_BYTES: Final = 260  # one hold, posting or ended hold: key, struct, dict slot (~230 B)
DEFAULT_BUDGET_BYTES: Final = 256 * 1024 * 1024


def state_bytes(state: CardState) -> int:
    """Estimate the memory one cached state holds (tests/unit/test_card_states.py measures it)."""
    entries = len(state.holds) + len(state.postings) + len(state.closed_holds)
    return STATE_BASE_BYTES + ENTRY_BYTES * entries


class CardStates:
    """An LRU of card states plus one lock per card, so one process decides one card at a time."""

    def __init__(
        self,
        store: EventStore,
        subjects: Subjects,
        capacity: int = 100_000,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
    ) -> None:
        self._store = store
        self._subjects = subjects
        self._capacity = capacity
        self._budget = budget_bytes
        self._bytes = 0
        self._states: OrderedDict[str, CardState] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiters: dict[str, int] = {}

    @asynccontextmanager
    async def locked(self, card_id: str) -> AsyncIterator[None]:
        """Serialise decisions on one card inside this process (replicas are handled by CAS)."""
        lock = self._locks.setdefault(card_id, asyncio.Lock())
        self._waiters[card_id] = self._waiters.get(card_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._waiters[card_id] -= 1
            if self._waiters[card_id] == 0:
                del self._waiters[card_id]
                del self._locks[card_id]

    async def current(self, card_id: str) -> CardState:
        """Return the card's state, reading only the events appended since the cached version."""
        state = self._states.get(card_id, EMPTY)
        loaded = await self._store.load(
            self._subjects.card_family(card_id), after_sequence=state.version
        )
        for message in loaded.messages:
            state = evolve(state, decode_event(message.data), message.sequence)
        self._remember(card_id, state)
        return state

    async def known(self, card_id: str) -> CardState:
        """Return the cached state if there is one (it may be stale), else load it."""
        state = self._states.get(card_id)
        return await self.current(card_id) if state is None else state

    def cached(self, card_id: str) -> CardState:
        """Return the cached state (possibly stale, possibly empty) without reading the stream."""
        return self._states.get(card_id, EMPTY)

    def applied(
        self,
        card_id: str,
        state: CardState,
        events: Sequence[SourceEvent],
        positions: Sequence[Position],
    ) -> CardState:
        """Evolve the cached state with events we just appended at ``positions``."""
        for event, position in zip(events, positions, strict=False):
            state = evolve(state, event, position.sequence)
        self._remember(card_id, state)
        return state

    def forget(self, card_id: str) -> None:
        """Drop a card's cached state (the next decision reloads it)."""
        self._states.pop(card_id, None)
        self._bytes -= self._sizes.pop(card_id, 0)

    def __len__(self) -> int:
        return len(self._states)

    @property
    def estimated_bytes(self) -> int:
        """The estimated memory of the cached states (kept within ``budget_bytes``)."""
        return self._bytes

    def _remember(self, card_id: str, state: CardState) -> None:
        cached = self._states.get(card_id)
        if cached is not None and cached.version > state.version:
            # A slower reader (a GetCard's catch-up) finished after a newer state was kept:
            # never move a card backwards.
            self._states.move_to_end(card_id)
            return
        size = state_bytes(state)
        self._bytes += size - self._sizes.get(card_id, 0)
        self._sizes[card_id] = size
        self._states[card_id] = state
        self._states.move_to_end(card_id)
        while len(self._states) > 1 and (
            len(self._states) > self._capacity or self._bytes > self._budget
        ):
            evicted, _ = self._states.popitem(last=False)
            self._bytes -= self._sizes.pop(evicted)
