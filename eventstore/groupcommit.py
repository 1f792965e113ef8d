"""``GroupCommitWriter``: coalesce concurrent commands into atomic batches, one fsync for many.

A *unit* is one command's messages (its events and its outcome marker); it is all-or-nothing.
Units submitted concurrently are packed, in arrival order, into ADR-50 atomic batches of at most
``max_batch`` messages, with up to ``max_inflight`` batches awaiting their ack at once. There is no
linger: a batch leaves as soon as a slot is free, so a lone command waits for one round trip and
one fsync, and under load each batch carries whatever arrived while the previous ones were in
flight.

Two rules keep batching from changing what a command means:

- A unit whose check would be evaluated stale is deferred to a later batch: one whose check filter
  covers a subject an earlier unit in the batch writes (the server checks every message against
  the stream *before* the batch), or equals an earlier unit's check filter. Deferred units keep
  their order, so one card's commands are sent in the order they were submitted.
- A batch rejected for a per-unit reason (a failed check, a duplicate ``Nats-Msg-Id``) stored
  nothing, and the server does not say which unit failed. The writer bisects: it resends both
  halves as separate batches, recursively, so only the culprits fail (with ``WrongLastSequence`` or
  ``DuplicateMessageId``) and every other unit commits. With one culprit among n units that is
  about log2(n) extra round trips.

The writer also remembers (bounded) a lower bound of the last sequence of every check filter it
committed. A queued unit expecting less than that is certainly stale (sequences only grow), so it
fails at once with ``WrongLastSequence`` instead of costing a rejected batch and a bisection: this is
what keeps a hot card cheap when many commands raced on the same version.

A batch the server dropped under load (too many in flight) stored nothing either and is retried
with backoff. Any other error (timeout, lost connection) fails every unit of that batch with the
translated error: the outcome is then unknown, and a retried command is safe because its marker
(expected sequence 0) rejects a second copy.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from contracts.errors import LedgerError
from eventstore.batching import MAX_BATCH, BatchGuard, check_batch, subject_matches
from eventstore.errors import (
    BatchRejected,
    DuplicateMessageId,
    InvalidBatch,
    StoreError,
    StoreUnavailable,
    WrongLastSequence,
    translate,
)
from eventstore.integrity import stamp
from eventstore.jetstream import EventStore
from eventstore.model import OutgoingMessage, Position

# Errors that name no unit but belong to one: bisect to find it.
_PER_UNIT: Final = (WrongLastSequence, DuplicateMessageId, InvalidBatch)
_REJECTED_BACKOFF: Final = (0.02, 0.05, 0.1, 0.2, 0.25)
KNOWN_FILTERS: Final = 100_000


@dataclass(slots=True)
class WriterStats:
    """Counters of a writer's work (for benchmarks and metrics)."""

    units: int = 0
    messages: int = 0
    batches: int = 0
    failed_batches: int = 0
    bisections: int = 0
    rejected_retries: int = 0
    stale_failed_early: int = 0


@dataclass(slots=True)
class _Unit:
    msgs: tuple[OutgoingMessage, ...]
    future: asyncio.Future[list[Position]]


class GroupCommitWriter:
    """Append units of messages atomically, coalescing concurrent units into shared batches."""

    def __init__(self, store: EventStore, max_batch: int = 500, max_inflight: int = 4) -> None:
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be in 1..{MAX_BATCH}, got {max_batch}")
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self._store = store
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.stats = WriterStats()
        self._queue: deque[_Unit] = deque()
        self._inflight = 0
        self._pump_scheduled = False
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        # check filter -> a sequence known to be stored under it (a lower bound of its last)
        self._known: OrderedDict[str, int] = OrderedDict()

    async def submit(self, unit: Sequence[OutgoingMessage]) -> list[Position]:
        """Append one unit atomically (possibly with others); return its messages' positions."""
        msgs = stamp(unit)  # in the caller's task: its context names who acts
        check_batch(msgs, self.max_batch)
        if self._closing:
            raise StoreError("the group-commit writer is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Position]] = loop.create_future()
        self._queue.append(_Unit(msgs, future))
        self._idle.clear()
        if not self._pump_scheduled:
            # Wait one loop turn (not a timer): every submit made in this turn joins the batch.
            self._pump_scheduled = True
            loop.call_soon(self._pump)
        return await future

    async def close(self) -> None:
        """Refuse new units and wait until every submitted unit is committed or failed."""
        self._closing = True
        while self._queue or self._inflight:
            await self._idle.wait()

    async def __aenter__(self) -> GroupCommitWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _pump(self) -> None:
        self._pump_scheduled = False
        while self._queue and self._inflight < self.max_inflight:
            batch = self._take_batch()
            if not batch:
                break
            self._inflight += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._queue and self._inflight == 0:
            self._idle.set()

    def _take_batch(self) -> list[_Unit]:
        guard = BatchGuard()
        taken: list[_Unit] = []
        deferred: list[_Unit] = []
        queue = self._queue
        while queue:
            unit = queue.popleft()
            if unit.future.done():
                continue  # its caller was cancelled before it was sent
            stale = self._certainly_stale(unit)
            if stale is not None:
                self.stats.stale_failed_early += 1
                _fail(unit, stale)
                continue
            if guard.count + len(unit.msgs) > self.max_batch:
                queue.appendleft(unit)
                break
            if guard.admits(unit.msgs):
                guard.add_all(unit.msgs)
                taken.append(unit)
            else:
                deferred.append(unit)
        queue.extendleft(reversed(deferred))
        return taken

    def _certainly_stale(self, unit: _Unit) -> WrongLastSequence | None:
        for msg in unit.msgs:
            if msg.expect is None:
                continue
            known = self._known.get(msg.expect.subject_filter, 0)
            if known > msg.expect.last_sequence:
                return WrongLastSequence(known, [msg.expect], "already known to the writer")
        return None

    def _remember(self, msgs: Sequence[OutgoingMessage], positions: Sequence[Position]) -> None:
        for msg, position in zip(msgs, positions, strict=True):
            # the message carrying a check is (almost always) stored under its own filter: its
            # position is then a lower bound of the filter's last sequence
            if msg.expect is None or not subject_matches(msg.expect.subject_filter, msg.subject):
                continue
            subject_filter = msg.expect.subject_filter
            if position.sequence > self._known.get(subject_filter, 0):
                self._known[subject_filter] = position.sequence
                self._known.move_to_end(subject_filter)
                if len(self._known) > KNOWN_FILTERS:
                    self._known.popitem(last=False)

    async def _run(self, batch: list[_Unit]) -> None:
        try:
            await self._commit(batch)
        except asyncio.CancelledError:
            # shutdown must not leave callers waiting forever
            for unit in batch:
                _fail(unit, StoreUnavailable("the group-commit writer was stopped"))
            raise
        except Exception as exc:  # a bug here must fail the callers, not strand them
            for unit in batch:
                _fail(unit, translate(exc))
        finally:
            self._inflight -= 1
            self._pump()

    async def _commit(self, units: list[_Unit]) -> None:
        msgs = [m for unit in units for m in unit.msgs]
        retries = 0
        while True:
            self.stats.batches += 1
            try:
                positions = await self._store.send_batch(msgs)
            except BatchRejected as exc:
                self.stats.failed_batches += 1
                if retries >= len(_REJECTED_BACKOFF):
                    for unit in units:
                        _fail(unit, exc)
                    return
                await asyncio.sleep(_REJECTED_BACKOFF[retries])
                retries += 1
                self.stats.rejected_retries += 1
                continue
            except _PER_UNIT as exc:
                self.stats.failed_batches += 1
                if len(units) == 1:
                    _fail(units[0], exc)
                    return
                self.stats.bisections += 1
                half = len(units) // 2
                # A rejected batch stored nothing, so both halves are sent again, concurrently.
                await asyncio.gather(self._commit(units[:half]), self._commit(units[half:]))
                return
            except LedgerError as exc:
                self.stats.failed_batches += 1
                for unit in units:
                    _fail(unit, exc)
                return
            break
        self.stats.units += len(units)
        self.stats.messages += len(msgs)
        start = 0
        for unit in units:
            end = start + len(unit.msgs)
            self._remember(unit.msgs, positions[start:end])
            if not unit.future.done():
                unit.future.set_result(positions[start:end])
            start = end


def _fail(unit: _Unit, exc: BaseException) -> None:
    if not unit.future.done():
        unit.future.set_exception(exc)
