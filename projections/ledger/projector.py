"""The live ledger projector: durable pull consumer → one Postgres transaction per batch → ack.

Exactly-once effects (DESIGN §3.7): a batch's entries, balances, transactions, outbox rows and the
tracking row are written in one transaction; messages at or below the tracking row's sequence are
skipped, so a redelivery after a crash (before or after the commit) has no second effect; the batch
is acknowledged only after the commit. Single writer (§3.8): see ``leadership``. A poison event
stops the projector loudly and for good (until an operator deploys a fix): the good prefix of its
batch is committed, the poison message is neither acked nor nak'd (no hot redelivery loop), an
error is logged, ``jetledger_ledger_poison_events_total`` and ``…_projector_stopped`` go up, and
``on_poison`` lets the service report NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
from nats.js import JetStreamContext

from contracts.codec import UndecodableEvent, decode_event
from contracts.events import SourceEvent
from contracts.subjects import StreamNames
from projections.ledger import store
from projections.ledger.faults import FaultHook
from projections.ledger.leadership import Deposed, Leadership
from projections.ledger.metrics import LedgerMetrics
from projections.ledger.outbox import OutboxRelay
from projections.ledger.rows import InvalidEvent, Projection, accounts_touched
from projections.ledger.schema import LIVE_SCHEMA, PROJECTION_NAME
from projections.ledger.source import DurableConsumer, Received, ack_batch, sleep_or

log = logging.getLogger(__name__)

CONSUMER_NAME = "ledger-projector"
_RETRYABLE = (psycopg.OperationalError, nats.errors.Error, Deposed, OSError, TimeoutError)


class PoisonEvent(RuntimeError):
    """A message the projector cannot apply; it stops the projector."""

    def __init__(self, item: Received, reason: str) -> None:
        super().__init__(
            f"poison event at {item.stream}:{item.sequence} ({item.subject}): {reason}"
        )
        self.item = item
        self.reason = reason


class _InvalidAt(Exception):
    def __init__(self, sequence: int, error: InvalidEvent) -> None:
        super().__init__(str(error))
        self.sequence = sequence
        self.error = error


@dataclass
class ProjectorConfig:
    """Tunables of the live projector."""

    batch: int = 500
    fetch_timeout: float = 1.0
    ack_wait: float = 30.0
    retry_seconds: float = 1.0
    holder: str = "ledger"
    fault: str = ""


@dataclass
class Projector:
    """Runs the ledger projection of one source stream while it holds the lease."""

    conninfo: str
    js: JetStreamContext
    streams: StreamNames
    metrics: LedgerMetrics
    config: ProjectorConfig = field(default_factory=ProjectorConfig)
    on_poison: Callable[[PoisonEvent], Any] | None = None
    poisoned: PoisonEvent | None = None

    def __post_init__(self) -> None:
        self._fault = FaultHook(self.config.fault)
        self._leadership = Leadership(
            self.conninfo, f"{PROJECTION_NAME}:{self.streams.source}", self.config.holder
        )
        self._relay_wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Stand by, lead, project; restart leadership after infrastructure errors until ``stop``."""
        try:
            while not stop.is_set():
                epoch = await self._leadership.acquire(stop)
                if epoch is None:
                    return
                self.metrics.leader.set(1)
                try:
                    await self._lead(stop)
                except PoisonEvent as poison:
                    self._report_poison(poison)
                    # Keep the lease so a standby does not take over only to stop on it too.
                    await stop.wait()
                    return
                except _RETRYABLE as exc:
                    self.metrics.failures.inc()
                    log.warning("projector restarting", extra={"error": repr(exc)})
                finally:
                    self.metrics.leader.set(0)
                    await self._leadership.release()
                await sleep_or(stop, self.config.retry_seconds)
        finally:
            await self._leadership.release()

    async def _lead(self, stop: asyncio.Event) -> None:
        stream = self.streams.source
        consumer = DurableConsumer(
            self.js,
            stream,
            CONSUMER_NAME,
            self.streams.subjects.all_cards,
            self.config.ack_wait,
        )
        conn = await psycopg.AsyncConnection.connect(self.conninfo, prepare_threshold=None)
        relay = OutboxRelay(self.conninfo, self.js, self.streams, self.metrics, self._relay_wake)
        relay_stop = asyncio.Event()
        relay_task = asyncio.create_task(relay.run(relay_stop), name="ledger-outbox-relay")
        try:
            async with conn.transaction():
                start = await store.lock_tracking(conn, LIVE_SCHEMA, stream)
            await consumer.start_after(start)
            log.info("projector consuming", extra={"stream": stream, "after": start})
            batch = await consumer.fetch(self.config.batch, self.config.fetch_timeout)
            while not stop.is_set():
                await self._leadership.alive()
                if relay_task.done():
                    relay_task.result()  # surface the relay's error (restarts leadership)
                if not batch:
                    self.metrics.lag_events.set(0)
                    self.metrics.lag_seconds.set(0)
                    batch = await consumer.fetch(self.config.batch, self.config.fetch_timeout)
                    continue
                # Pull the next batch while this one commits (it is acked only after its own
                # commit, so a crash leaves it unacked and the tracking row decides anyway).
                prefetch = asyncio.create_task(
                    consumer.fetch(self.config.batch, self.config.fetch_timeout)
                )
                try:
                    await self._handle(conn, batch)
                finally:
                    batch = await prefetch
        finally:
            relay_stop.set()
            self._relay_wake.set()
            with contextlib.suppress(Exception):
                await relay_task
            await consumer.close()
            with contextlib.suppress(Exception):
                await conn.close()

    async def _handle(self, conn: psycopg.AsyncConnection[Any], batch: list[Received]) -> None:
        started = time.perf_counter()
        good: list[tuple[Received, SourceEvent]] = []
        poison: PoisonEvent | None = None
        for item in _in_order(batch):
            try:
                good.append((item, decode_event(item.data)))
            except UndecodableEvent as exc:
                poison = PoisonEvent(item, str(exc))
                break
        try:
            applied = await self._commit(conn, good)
        except _InvalidAt as bad:
            # Commit what precedes the offending event, then stop on it.
            prefix = [(i, e) for i, e in good if i.sequence < bad.sequence]
            applied = await self._commit(conn, prefix)
            culprit = next(i for i, _ in good if i.sequence == bad.sequence)
            poison = PoisonEvent(culprit, str(bad.error))
            good = prefix
        if good:
            self._fault.reached("after_commit")
            await ack_batch(max((i for i, _ in good), key=lambda i: i.sequence))
            self._fault.reached("after_ack")
            self._relay_wake.set()
            last = good[-1][0]
            self.metrics.events_projected.inc(applied)
            self.metrics.redelivered_skipped.inc(len(batch) - applied)
            self.metrics.lag_events.set(last.num_pending)
            self.metrics.lag_seconds.set(max(0.0, time.time() - last.time.timestamp()))
        self.metrics.batch_duration.observe(time.perf_counter() - started)
        if poison is not None:
            raise poison

    async def _commit(
        self, conn: psycopg.AsyncConnection[Any], items: list[tuple[Received, SourceEvent]]
    ) -> int:
        """Apply ``items`` in one transaction; return how many were new (not redeliveries)."""
        if not items:
            return 0
        stream = self.streams.source
        async with conn.transaction():
            last = await store.lock_tracking(conn, LIVE_SCHEMA, stream)
            await self._leadership.check_epoch(conn)
            fresh = [(i, e) for i, e in items if i.sequence > last]
            if not fresh:
                return 0
            accounts: set[str] = set()
            for _, event in fresh:
                accounts |= accounts_touched(event)
            book = await store.load_balances(conn, LIVE_SCHEMA, accounts)
            projection = Projection(book)
            for item, event in fresh:
                try:
                    projection.apply(event, stream, item.sequence)
                except InvalidEvent as exc:
                    raise _InvalidAt(item.sequence, exc) from exc
            await store.write_rows(conn, LIVE_SCHEMA, projection.rows)
            await store.upsert_balances(conn, LIVE_SCHEMA, book.touched.values())
            await store.write_outbox(conn, self.streams.subjects, projection.rows.outbox)
            tail = fresh[-1][0]
            await store.set_tracking(conn, LIVE_SCHEMA, stream, tail.sequence, tail.time)
            self._fault.reached("before_commit")
        self.metrics.entries_written.inc(len(projection.rows.entries))
        return len(fresh)

    def _report_poison(self, poison: PoisonEvent) -> None:
        self.poisoned = poison
        self.metrics.poison_events.inc()
        self.metrics.stopped.set(1)
        log.error(
            "ledger projector stopped on a poison event; fix it (e.g. an upcaster) and restart",
            extra={
                "stream": poison.item.stream,
                "sequence": poison.item.sequence,
                "subject": poison.item.subject,
                "reason": poison.reason,
            },
        )
        if self.on_poison is not None:
            self.on_poison(poison)


def _in_order(batch: list[Received]) -> list[Received]:
    """Drop redeliveries inside one fetch (after an ack-wait expiry a pull can return a message
    twice, or an older one after newer ones): keep each sequence once, in increasing order.
    First deliveries always arrive in stream order, so this never skips an unseen message."""
    out: list[Received] = []
    highest = 0
    for item in batch:
        if item.sequence > highest:
            out.append(item)
            highest = item.sequence
    return out
