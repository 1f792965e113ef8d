"""Per-card decision state and the card's recent commands, kept in memory, read from its family.

The cache is an optimisation only: every append is compare-and-set on the card's family
(``card.<id>.>``) at the cached version, so a stale entry costs one conflict and a tail reload,
never a wrong decision (docs/architecture.md, §4.3).

Memory is bounded twice: at most ``capacity`` cards, and at most ``budget_bytes`` of estimated
state (``state_bytes``: a fixed part plus one share per open hold, refundable posting and ended
hold, all of which are bounded per card by ``commands.state``; plus the card's command log).
Least recently used cards leave first, into a second tier: the card's state and log *packed*
(the snapshot encoding, compressed: ~0.8 KB for a card with ten commands, against ~6.5 KB live),
within ``packed_budget_bytes``. A packed card comes back in ~30 µs without reading the stream; a
card pushed out of both tiers is loaded again (snapshot + tail) when it is next used. Reloads from
the stream are what a wide working set cannot afford: a card's few events lie spread over the whole
stream, so each reload makes nats-server read several message blocks.

Next to the state, each card keeps a ``CommandLog``: the last ``recent`` commands recorded on it
(every event carries its command's id, type and fingerprint), and a *horizon*: every command
recorded on the card at a sequence above the horizon is in the log. A horizon of 0 means the log
knows every command the card ever had; an older id is looked up in the command index
(``services.intake.index``). Memory is bounded by cards × ``recent``, never by commands.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import zlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import msgspec

from commands.evolve import evolve
from commands.state import EMPTY, CardState
from contracts.codec import decode_event
from contracts.errors import LedgerError
from contracts.events import Event, SourceEvent, TransactionDeclined
from contracts.subjects import Subjects
from eventstore import EventStore, OutgoingMessage, Position
from services.intake.snapshots import (
    SNAPSHOT_EVERY,
    Snapshot,
    SnapshotRecord,
    decode_snapshot,
    encode_snapshot,
)

logger = logging.getLogger(__name__)

RECENT_COMMANDS: Final = 16  # per card; older ids are found through the filter and the index
FORGOTTEN_BITS: Final = 16_384  # a 2 KiB Bloom filter of the ids a card's log forgot
_HASHES: Final = 3
KNOWN_IDS: Final = 200_000  # process-wide id -> card, to refuse an id reused on another card
STATE_BASE_BYTES: Final = 1_200  # a state, its strings and its LRU slot (measured: ~1.1 KB)
ENTRY_BYTES: Final = 260  # one hold, posting or ended hold: key, struct, dict slot (~230 B)
RECORD_BYTES: Final = 450  # one command of a card's log: the record, its strings, a dict slot
PACKED_BYTES: Final = 160  # one packed card besides its bytes: the object, its key and LRU slot
DEFAULT_BUDGET_BYTES: Final = 128 * 1024 * 1024  # live states
DEFAULT_PACKED_BUDGET_BYTES: Final = 128 * 1024 * 1024  # packed states


def state_bytes(state: CardState) -> int:
    """Estimate the memory one cached state holds (tests/unit/test_card_states.py measures it)."""
    entries = len(state.holds) + len(state.postings) + len(state.closed_holds)
    return STATE_BASE_BYTES + ENTRY_BYTES * entries


class Recorded(msgspec.Struct, frozen=True, gc=False):
    """One recorded command as its events tell it (a decline is a recorded outcome too)."""

    command_id: str
    command_type: str
    fingerprint: str  # "" for events written before events carried it: ask the command index
    card_id: str
    outcome: str  # "accepted" | "declined"
    reason: str
    detail: str
    sequence: int  # of the command's last event
    at: datetime


def recorded(event: Event, sequence: int) -> Recorded:
    """The command record an event of it implies (the last event of a command wins)."""
    if isinstance(event, TransactionDeclined):
        return Recorded(
            event.command_id,
            event.command_type,
            event.fingerprint,
            event.card_id,
            "declined",
            event.reason,
            event.detail,
            sequence,
            event.at,
        )
    return Recorded(
        event.command_id,
        event.command_type,
        event.fingerprint,
        event.card_id,
        "accepted",
        "",
        "",
        sequence,
        event.at,
    )


class CommandLog:
    """The recent commands of one card and the horizon below which the log may miss some.

    The ids the log forgets go into a fixed-size Bloom filter (2 KiB, allocated at the first
    eviction): an id it does not contain was certainly never recorded on the card at or below the
    horizon, so a new id costs no index lookup. A log that did not start from the card's first event
    (``complete=False``) has no such filter and always asks. False positives (about 0.5 % at 1,000
    forgotten ids, 20 % at 5,000) only cost the lookup.
    """

    __slots__ = ("_forgotten", "_recent", "capacity", "complete", "horizon")

    def __init__(self, capacity: int = RECENT_COMMANDS, horizon: int = 0) -> None:
        self._recent: OrderedDict[str, Recorded] = OrderedDict()
        self.capacity = capacity
        self.horizon = horizon
        self.complete = horizon == 0  # every id at or below the horizon went through this log
        self._forgotten: bytearray | None = None

    def surely_absent(self, command_id: str) -> bool:
        """Tell whether ``command_id`` was certainly not recorded at or below the horizon."""
        if not self.complete:
            return False
        if self._forgotten is None:
            return True
        return not all(self._forgotten[b >> 3] & (1 << (b & 7)) for b in _bits(command_id))

    def _forget(self, command_id: str) -> None:
        if not self.complete:
            return
        if self._forgotten is None:
            self._forgotten = bytearray(FORGOTTEN_BITS // 8)
        for b in _bits(command_id):
            self._forgotten[b >> 3] |= 1 << (b & 7)

    def get(self, command_id: str) -> Recorded | None:
        """The record of ``command_id`` if the log holds it."""
        return self._recent.get(command_id)

    def add(self, record: Recorded) -> None:
        """Remember a command (again, for its later events), forgetting the oldest past capacity."""
        self._recent[record.command_id] = record
        self._recent.move_to_end(record.command_id)
        while len(self._recent) > self.capacity:
            _, old = self._recent.popitem(last=False)
            self.horizon = max(self.horizon, old.sequence)
            self._forget(old.command_id)

    def estimated_bytes(self) -> int:
        """The estimated memory of the log (its records and its filter)."""
        forgotten = 0 if self._forgotten is None else len(self._forgotten)
        return RECORD_BYTES * len(self._recent) + forgotten

    def records(self) -> list[Recorded]:
        """The records, oldest first."""
        return list(self._recent.values())

    def snapshot(self, state: CardState) -> Snapshot:
        """This log and ``state`` as a snapshot."""
        return Snapshot(
            state=state,
            horizon=self.horizon,
            complete=self.complete,
            recent=tuple(
                SnapshotRecord(*msgspec.structs.astuple(r)) for r in self._recent.values()
            ),
            forgotten=None if self._forgotten is None else bytes(self._forgotten),
        )

    @classmethod
    def restored(cls, snapshot: Snapshot, capacity: int) -> CommandLog:
        """The log a snapshot recorded."""
        log = cls(capacity, snapshot.horizon)
        log.complete = snapshot.complete
        if snapshot.forgotten is not None and len(snapshot.forgotten) == FORGOTTEN_BITS // 8:
            log._forgotten = bytearray(snapshot.forgotten)
        elif snapshot.forgotten is not None:
            log.complete = False  # another filter size: do not trust it
        for record in snapshot.recent:
            log.add(Recorded(*msgspec.structs.astuple(record)))
        return log

    def __len__(self) -> int:
        return len(self._recent)


def _bits(command_id: str) -> list[int]:
    digest = hashlib.blake2b(command_id.encode(), digest_size=16).digest()
    h1 = int.from_bytes(digest[:8], "little")
    h2 = int.from_bytes(digest[8:], "little") | 1
    return [(h1 + i * h2) % FORGOTTEN_BITS for i in range(_HASHES)]


@dataclass(slots=True)
class _Entry:
    state: CardState
    log: CommandLog
    since_snapshot: int = 0  # events applied since the last snapshot (or the full load)
    snapshotting: bool = False


@dataclass(slots=True)
class LoadStats:
    """Counters of cold loads (for tests and benchmarks)."""

    from_snapshot: int = 0
    events_read: int = 0
    snapshots_written: int = 0
    unpacked: int = 0  # cards brought back from the packed tier


def _pack(entry: _Entry) -> bytes:
    return zlib.compress(encode_snapshot(entry.log.snapshot(entry.state)), 1)


class CardStates:
    """An LRU of card states and command logs, plus one lock per card (one decider per card)."""

    def __init__(
        self,
        store: EventStore,
        subjects: Subjects,
        capacity: int = 100_000,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        packed_budget_bytes: int = DEFAULT_PACKED_BUDGET_BYTES,
        recent: int = RECENT_COMMANDS,
        snapshot_stream: str = "",
        snapshot_every: int = SNAPSHOT_EVERY,
    ) -> None:
        self._store = store
        self._subjects = subjects
        self._capacity = capacity
        self._budget = budget_bytes
        self._bytes = 0
        self._sizes: dict[str, int] = {}
        self._packed_budget = packed_budget_bytes
        self._packed_bytes = 0
        self._packed: OrderedDict[str, tuple[bytes, int]] = OrderedDict()  # + since_snapshot
        self._recent = recent
        self._snapshot_stream = snapshot_stream  # "" : no snapshots
        self._snapshot_every = snapshot_every
        self._background: set[asyncio.Task[None]] = set()
        self.stats = LoadStats()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiters: dict[str, int] = {}
        # command id -> card id, the last KNOWN_IDS ids noted (first noted, first forgotten). A plain
        # dict and a queue with the card ids interned: ~120 B an id (an OrderedDict of fresh
        # strings took ~230 B, 46 MB at the bound).
        self._ids: dict[str, str] = {}
        self._id_order: deque[str] = deque()

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
        entry = self._entry(card_id)
        if entry is None:
            entry = await self._cold(card_id)
        state = entry.state
        loaded = await self._store.load(self._subjects.card(card_id), after_sequence=state.version)
        for message in loaded.messages:
            event = decode_event(message.data)
            state = evolve(state, event, message.sequence)
            self._note(entry.log, recorded(event, message.sequence))
        self.stats.events_read += len(loaded.messages)
        cached = self._entries.get(card_id)
        if cached is not None and cached.state.version > state.version:
            # A slower reader (a GetCard's catch-up) finished after a newer state was kept:
            # never move a card backwards.
            self._entries.move_to_end(card_id)
            return cached.state
        entry.state = state
        entry.since_snapshot += len(loaded.messages)
        self._remember(card_id, entry)
        self._maybe_snapshot(card_id, entry)
        return state

    async def _cold(self, card_id: str) -> _Entry:
        """A new entry: from the card's latest snapshot if there is a usable one, else empty."""
        if self._snapshot_stream:
            try:
                stored = await self._store.last_by_subject(
                    self._subjects.card_snapshot(card_id), stream=self._snapshot_stream
                )
            except LedgerError:
                # No snapshots stream, no permission, or NATS away (then the family read below
                # fails too): load the whole family.
                stored = None
            snapshot = None if stored is None else decode_snapshot(stored.data)
            if snapshot is not None and snapshot.state.card_id == card_id:
                self.stats.from_snapshot += 1
                log = CommandLog.restored(snapshot, self._recent)
                for record in log.records():
                    self._know(record.command_id, card_id)
                return _Entry(snapshot.state, log)
        return _Entry(EMPTY, CommandLog(self._recent))

    def _maybe_snapshot(self, card_id: str, entry: _Entry) -> None:
        if (
            not self._snapshot_stream
            or entry.snapshotting
            or entry.since_snapshot < self._snapshot_every
        ):
            return
        entry.snapshotting = True
        entry.since_snapshot = 0
        message = OutgoingMessage(
            subject=self._subjects.card_snapshot(card_id),
            data=encode_snapshot(entry.log.snapshot(entry.state)),
        )
        task = asyncio.get_running_loop().create_task(self._write_snapshot(entry, message))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_snapshot(self, entry: _Entry, message: OutgoingMessage) -> None:
        try:
            await self._store.append(message)
            self.stats.snapshots_written += 1
        except Exception:  # a cache: a failed snapshot costs a longer cold load, nothing else
            logger.debug("card snapshot not written", exc_info=True)
        finally:
            entry.snapshotting = False

    async def known(self, card_id: str) -> CardState:
        """Return the cached state if there is one (it may be stale), else load it."""
        entry = self._entry(card_id)
        return await self.current(card_id) if entry is None else entry.state

    def cached(self, card_id: str) -> CardState:
        """Return the cached state (possibly stale, possibly empty) without reading the stream."""
        entry = self._entry(card_id)
        return EMPTY if entry is None else entry.state

    def log(self, card_id: str) -> CommandLog:
        """The card's command log as loaded so far (empty with horizon 0 if never loaded)."""
        entry = self._entry(card_id)
        return CommandLog(self._recent) if entry is None else entry.log

    def card_of(self, command_id: str) -> str | None:
        """The card a command id was last seen on by this process (bounded memory; may forget)."""
        return self._ids.get(command_id)

    def applied(
        self,
        card_id: str,
        state: CardState,
        events: Sequence[SourceEvent],
        positions: Sequence[Position],
    ) -> CardState:
        """Evolve the cached state with events we just appended at ``positions``."""
        decided_on = state.version
        for event, position in zip(events, positions, strict=False):
            state = evolve(state, event, position.sequence)
        entry = self._entry(card_id)
        if entry is not None and entry.state.version >= state.version and entry.state is not state:
            # A late or older state never replaces a newer one (a GetCard's catch-up got there).
            self._entries.move_to_end(card_id)
            return entry.state
        if entry is None or entry.state.version != decided_on:
            # Not the state this log followed: the log knows nothing below the decision.
            entry = _Entry(state, CommandLog(self._recent, horizon=decided_on))
        for event, position in zip(events, positions, strict=False):
            self._note(entry.log, recorded(event, position.sequence))
        entry.state = state
        entry.since_snapshot += len(events)
        self._remember(card_id, entry)
        self._maybe_snapshot(card_id, entry)
        return state

    def forget(self, card_id: str) -> None:
        """Drop a card's cached state (the next decision reloads it)."""
        self._entries.pop(card_id, None)
        self._bytes -= self._sizes.pop(card_id, 0)
        self._unpack(card_id)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def estimated_bytes(self) -> int:
        """The estimated memory of the cached states and logs (kept within ``budget_bytes``)."""
        return self._bytes

    @property
    def packed(self) -> tuple[int, int]:
        """How many cards are packed, and their memory (kept within ``packed_budget_bytes``)."""
        return len(self._packed), self._packed_bytes

    def _entry(self, card_id: str) -> _Entry | None:
        """The card's live entry, unpacked if it was packed; None if neither tier has it."""
        entry = self._entries.get(card_id)
        if entry is not None:
            return entry
        packed = self._unpack(card_id)
        if packed is None:
            return None
        blob, since_snapshot = packed
        snapshot = decode_snapshot(zlib.decompress(blob))
        if snapshot is None:  # cannot happen: this process packed it
            return None
        entry = _Entry(snapshot.state, CommandLog.restored(snapshot, self._recent), since_snapshot)
        self.stats.unpacked += 1
        self._remember(card_id, entry)
        return entry

    def _note(self, log: CommandLog, record: Recorded) -> None:
        log.add(record)
        self._know(record.command_id, record.card_id)

    def _know(self, command_id: str, card_id: str) -> None:
        if command_id not in self._ids:
            self._id_order.append(command_id)
            if len(self._id_order) > KNOWN_IDS:
                del self._ids[self._id_order.popleft()]
        self._ids[command_id] = sys.intern(card_id)

    def _remember(self, card_id: str, entry: _Entry) -> None:
        size = state_bytes(entry.state) + entry.log.estimated_bytes()
        self._bytes += size - self._sizes.get(card_id, 0)
        self._sizes[card_id] = size
        self._unpack(card_id)  # a packed copy, if the entry was pushed out while it was read
        self._entries[card_id] = entry
        self._entries.move_to_end(card_id)
        while len(self._entries) > 1 and (
            len(self._entries) > self._capacity or self._bytes > self._budget
        ):
            evicted, old = self._entries.popitem(last=False)
            self._bytes -= self._sizes.pop(evicted)
            if self._packed_budget > 0:
                self._pack(evicted, old)

    def _unpack(self, card_id: str) -> tuple[bytes, int] | None:
        packed = self._packed.pop(card_id, None)
        if packed is not None:
            self._packed_bytes -= len(packed[0]) + PACKED_BYTES
        return packed

    def _pack(self, card_id: str, entry: _Entry) -> None:
        blob = _pack(entry)
        self._packed[card_id] = (blob, entry.since_snapshot)
        self._packed_bytes += len(blob) + PACKED_BYTES
        while self._packed_bytes > self._packed_budget and self._packed:
            _, (dropped, _) = self._packed.popitem(last=False)
            self._packed_bytes -= len(dropped) + PACKED_BYTES
