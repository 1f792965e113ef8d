"""The one projection runner: a single writer applies batches, each in one Postgres transaction.

For every projection (``projections.model.Projection``) the runner

1. waits for the projection's lease (``projections.lease``: one writer, fenced by an epoch);
2. reads each stream's position from ``<schema>.tracking`` and opens a durable subscription right
   after it (``EventStore.subscribe``): Postgres decides where reading resumes, never the
   consumer's ack state. The reader hands out every message once, in order, re-anchoring after a
   gap (``eventstore.reader``), so a position can never pass a message that was not applied;
3. applies what every stream has waiting in one transaction: lock the streams' tracking rows, check
   the lease's epoch, drop what is at or below each position (a redelivery), let the projection
   write its rows stream by stream, advance the tracking rows, COMMIT; then acknowledge the batches
   and run the projection's after-commit effects;
4. on a poison message commits everything before it and stops for good (metric, log, the
   ``on_halt`` callback that turns health NOT_SERVING), keeping the lease so a standby does not
   take over only to stop on the same message;
5. on an infrastructure error (NATS, Postgres, a lost lease) gives the lease up, waits, starts over.

Streams are read ahead while a batch commits, into one waiting batch per stream that grows up to
``max_batch`` messages: the busier the applier, the bigger its batches (fewer balance loads and
upserts, fewer round trips an event). The batches waiting when the applier turns to them — one per
stream — go into one transaction on one connection: a projection that reads two streams (the
notifications read the card events and the ledger entries derived from them) does not make one
stream's batch wait for the other's commit, and commits half as often. Lag (events and seconds)
is exported per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import psycopg

from contracts.errors import Unavailable
from eventstore import EventStore, ReadBatch, StoredMessage, Subscription
from eventstore.integrity import Keyring, Verdict, check_stored
from eventstore.tracing import record_consumed
from projections import tracking
from projections.faults import FaultHook
from projections.lease import Lease
from projections.metrics import ProjectionMetrics
from projections.model import Conn, Poison, Projection

log = logging.getLogger(__name__)

ALIVE_CHECK_SECONDS: Final = 1.0  # how often the lease connection is probed while applying
READ_WAIT_SECONDS: Final = 1.0
CANCEL_RETRY_SECONDS: Final = 1.0


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again any that is still
    running a moment later. On Python 3.11 ``asyncio.wait_for`` can swallow a cancellation that
    arrives as its inner wait completes (gh-86296): a reader loop that lost its cancellation kept
    running, and a single ``cancel()`` + ``gather`` waited for it forever, so a projection's
    leadership never ended and it stopped applying (the cluster fault campaign, docs/faults.md).
    """
    for task in tasks:
        task.cancel()
    pending = {task for task in tasks if not task.done()}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=CANCEL_RETRY_SECONDS)
        for task in pending:
            task.cancel()
    for task in tasks:  # retrieve outcomes, so none is reported as never retrieved
        if not task.cancelled():
            task.exception()


class PositionMoved(Unavailable):
    """The tracking row went below what this runner applied (the schema was reset): start over."""


_RETRYABLE: Final = (Unavailable, psycopg.OperationalError, psycopg.InterfaceError, OSError)


@dataclass
class RunnerConfig:
    """Tunables of a runner."""

    batch: int = 500  # messages a pull asks for; a batch after idling holds at most this many
    max_batch: int = 0  # what a batch may grow to while the one before commits (0: ``batch``)
    # How long a batch smaller than ``batch`` waits for more before it is applied (0: at once).
    # Fewer, bigger transactions for a projection whose readers can wait (the command index);
    # it adds up to this much to the projection's lag.
    linger_seconds: float = 0.0
    ack_wait_seconds: float = 30.0
    retry_seconds: float = 1.0
    holder: str = "projection"
    fault: str = ""


@dataclass
class _Lag:
    """What one stream's reader has seen and the applier not yet applied."""

    pending: int = 0  # stored, not yet read (the consumer's count after the last delivery)
    queued: int = 0  # read, waiting for the applier
    oldest_queued: float = 0.0  # store time of the first of those (unix seconds; 0: none)
    applied_at: float = 0.0  # store time of the last applied message

    def events(self) -> float:
        return float(self.pending + self.queued)

    def seconds(self) -> float:
        if self.oldest_queued:
            return max(0.0, time.time() - self.oldest_queued)
        if self.pending and self.applied_at:
            return max(0.0, time.time() - self.applied_at)
        return 0.0


class _Inbox:
    """Batches read and not yet applied: one batch per stream, which grows while the applier is
    busy (up to ``limit`` messages), so a slow commit is followed by a big batch, not many small
    ones; plus the first error of a reader or of the side work, and the stop signal."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.batches: dict[str, ReadBatch] = {}
        self.error: BaseException | None = None
        self.stopped = False
        self._changed = asyncio.Condition()

    def room(self, stream: str) -> int:
        held = self.batches.get(stream)
        return self.limit - (0 if held is None else len(held.messages))

    async def wait_for_room(self, stream: str) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.room(stream) > 0 or self.stopped)

    async def put(self, got: ReadBatch) -> None:
        async with self._changed:
            held = self.batches.get(got.stream)
            if held is None:
                self.batches[got.stream] = got
            else:
                held.messages += got.messages
                held.last_sequence, held.pending = got.last_sequence, got.pending
                held.ack_subject = got.ack_subject
            self._changed.notify_all()

    async def fail(self, error: BaseException) -> None:
        async with self._changed:
            self.error = self.error or error
            self._changed.notify_all()

    async def stop(self) -> None:
        async with self._changed:
            self.stopped = True
            self._changed.notify_all()

    async def take(self, linger: float = 0.0, enough: int = 0) -> list[ReadBatch] | None:
        """Every waiting batch, one per stream (None once stopped); raises a reader's error.
        With ``linger``, batches of fewer than ``enough`` messages wait up to that long to grow."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self.batches) or self.error or self.stopped)
            if linger > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(
                            lambda: (
                                self.error is not None
                                or self.stopped
                                or any(len(b.messages) >= enough for b in self.batches.values())
                            )
                        ),
                        linger,
                    )
            if self.error is not None:
                raise self.error
            if self.stopped:
                return None
            taken = list(self.batches.values())
            self.batches.clear()
            self._changed.notify_all()
            return taken


class ProjectionRunner:
    """Runs one projection while this instance holds its lease; see the module docstring."""

    def __init__(
        self,
        projection: Projection,
        store: EventStore,
        conninfo: str,
        metrics: ProjectionMetrics,
        config: RunnerConfig | None = None,
        on_halt: Callable[[Exception], Any] | None = None,
    ) -> None:
        self.projection = projection
        self.store = store
        self.conninfo = conninfo
        self.config = config or RunnerConfig()
        self.on_halt = on_halt
        self.halted: Exception | None = None
        self.leading = asyncio.Event()
        name = projection.name
        self._fault = FaultHook(self.config.fault)
        self._lease = Lease(
            conninfo, projection.lease_name, projection.lease_table, self.config.holder
        )
        self._applied: dict[str, int] = {}
        self._alive_at = 0.0
        self._lags: dict[str, _Lag] = {}
        self._m = metrics
        self._events = metrics.events_applied.labels(name)
        self._batches = metrics.batches.labels(name)
        self._skipped = metrics.skipped.labels(name)
        self._duration = metrics.batch_duration.labels(name)
        self._reanchors = metrics.reanchors.labels(name)
        for source in projection.sources():
            lag = self._lags[source.stream] = _Lag()
            metrics.lag_events.labels(name, source.stream).set_function(lag.events)
            metrics.lag_seconds.labels(name, source.stream).set_function(lag.seconds)

    async def run(self, stop: asyncio.Event) -> None:
        """Stand by, lead, apply; start over after infrastructure errors, until ``stop``."""
        name = self.projection.name
        try:
            while not stop.is_set():
                if await self._lease.acquire(stop) is None:
                    return
                self._m.leader.labels(name).set(1)
                self.leading.set()
                try:
                    await self._lead(stop)
                except Poison as poison:
                    self._halt(poison)
                    await stop.wait()  # keep the lease: a standby would only stop on it too
                    return
                except _RETRYABLE as exc:
                    self._m.restarts.labels(name).inc()
                    log.warning(
                        "projection restarting", extra={"projection": name, "error": str(exc)}
                    )
                finally:
                    self.leading.clear()
                    self._m.leader.labels(name).set(0)
                    for lag in self._lags.values():
                        lag.pending, lag.queued, lag.oldest_queued = 0, 0, 0.0
                    await self._lease.release()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.retry_seconds)
        finally:
            await self._lease.release()

    def _halt(self, error: Exception) -> None:
        self.halted = error
        name = self.projection.name
        self._m.poison.labels(name).inc()
        self._m.stopped.labels(name).set(1)
        detail: dict[str, object] = {"projection": name, "error": str(error)}
        if isinstance(error, Poison):
            message = error.message
            detail.update(stream=message.stream, sequence=message.sequence, subject=message.subject)
        log.error("projection stopped on a poison message; fix it and restart", extra=detail)
        if self.on_halt is not None:
            self.on_halt(error)

    async def _lead(self, stop: asyncio.Event) -> None:
        projection = self.projection
        # autocommit: ``_commit`` opens and ends each batch's transaction itself (fewer round trips)
        conn = await psycopg.AsyncConnection.connect(
            self.conninfo, prepare_threshold=None, autocommit=True
        )
        inbox = _Inbox(max(self.config.batch, self.config.max_batch))
        subs: dict[str, Subscription] = {}
        tasks: list[asyncio.Task[None]] = []
        side_stop = asyncio.Event()
        try:
            async with conn.transaction():
                known = await tracking.positions(conn, projection.schema)
            for source in projection.sources():
                after = self._applied[source.stream] = known.get(source.stream, 0)
                subs[source.stream] = await self.store.subscribe(
                    f"{projection.name}_{projection.schema}",
                    after,
                    source.filters,
                    stream=source.stream,
                    batch=self.config.batch,
                    ack_wait=timedelta(seconds=self.config.ack_wait_seconds),
                    server_filter=False,
                )
                log.info("projection reading", extra={"stream": source.stream, "after": after})
            tasks += [asyncio.create_task(self._read(sub, inbox)) for sub in subs.values()]
            tasks.append(asyncio.create_task(self._watch(stop, inbox)))
            tasks.append(asyncio.create_task(self._side_work(side_stop, inbox)))
            linger, enough = self.config.linger_seconds, self.config.batch
            while (taken := await inbox.take(linger, enough)) is not None:
                for got in taken:
                    lag = self._lags[got.stream]
                    lag.queued, lag.oldest_queued = 0, 0.0
                await self._apply(conn, subs, taken)
        finally:
            side_stop.set()
            await inbox.stop()  # a reader that lost its cancellation still ends at its next turn
            await cancel_and_wait(tasks)
            for sub in subs.values():
                await sub.close()
            with contextlib.suppress(Exception):
                await conn.close()

    async def _watch(self, stop: asyncio.Event, inbox: _Inbox) -> None:
        await stop.wait()
        await inbox.stop()

    async def _side_work(self, stop: asyncio.Event, inbox: _Inbox) -> None:
        try:
            await self.projection.while_leading(stop)
        except Exception as exc:  # surfaced by the applier: it restarts the leadership
            await inbox.fail(exc)

    async def _read(self, sub: Subscription, inbox: _Inbox) -> None:
        lag = self._lags[sub.stream]
        seen = 0
        try:
            while not inbox.stopped:
                await inbox.wait_for_room(sub.stream)
                if inbox.stopped:
                    return
                got = await sub.next_batch(inbox.room(sub.stream), READ_WAIT_SECONDS)
                if sub.reanchors > seen:
                    self._reanchors.inc(sub.reanchors - seen)
                    seen = sub.reanchors
                if got is None:
                    lag.pending = 0  # idle with pulls outstanding: nothing stored is unread
                    continue
                lag.pending = got.pending
                if got.messages and not lag.oldest_queued:
                    lag.oldest_queued = got.messages[0].time.timestamp()
                lag.queued += len(got.messages)
                await inbox.put(got)
        except Exception as exc:
            await inbox.fail(exc)

    async def _apply(
        self, conn: Conn, subs: dict[str, Subscription], taken: Sequence[ReadBatch]
    ) -> None:
        """Apply the batches waiting for every stream in one transaction, then acknowledge each.

        On a poison message the transaction is rolled back, everything before the poison message
        is committed (``_commit_good_part``) and the ``Poison`` is raised: the runner stops on it."""
        started = time.perf_counter()
        started_ns = time.time_ns()
        if started - self._alive_at > ALIVE_CHECK_SECONDS:
            await self._lease.alive()
            self._alive_at = started
        work = {got.stream: got.messages for got in taken if got.messages}
        try:
            results = await self._commit(conn, work) if work else {}
        except Poison as poison:
            await self._commit_good_part(conn, work, poison)
            raise
        for got in taken:
            if got.messages:
                self._lags[got.stream].applied_at = got.messages[-1].time.timestamp()
        if results:
            self._fault.reached("after_commit")
        for got in taken:
            subs[got.stream].ack(got)
        if results:
            self._fault.reached("after_ack")
            for got in taken:
                if got.stream in results:
                    record_consumed(
                        self.projection.name, got.stream, got.messages, started_ns, time.time_ns()
                    )
                    self.projection.committed(got.stream, results[got.stream])
            self._batches.inc()
        self._duration.observe(time.perf_counter() - started)

    async def _commit_good_part(
        self, conn: Conn, work: Mapping[str, Sequence[StoredMessage]], poison: Poison
    ) -> None:
        """Commit everything before the poison message(s): the rest of the poisoned stream's
        batch is cut at it, the other streams' batches are applied whole unless one of them
        holds a poison message too, then it is cut as well."""
        work = dict(work)
        while True:
            bad = poison.message
            work[bad.stream] = [m for m in work[bad.stream] if m.sequence < bad.sequence]
            work = {stream: messages for stream, messages in work.items() if messages}
            if not work:
                return
            try:
                results = await self._commit(conn, work)
            except Poison as another:
                poison = another
                continue
            for stream, result in results.items():
                self.projection.committed(stream, result)
            return

    async def _commit(
        self, conn: Conn, work: Mapping[str, Sequence[StoredMessage]]
    ) -> dict[str, object]:
        """Apply the new ones of each stream's ``messages`` in one transaction; return, by stream,
        the projection's result for every stream that had new ones (empty: nothing was new).

        The connection is in autocommit mode and the transaction is opened and closed here, so
        its edges cost one round trip each: BEGIN, the tracking rows' locks and the lease's epoch
        go in one pipeline; the new positions and COMMIT in another. Any error rolls back."""
        schema = self.projection.schema
        lease = self._lease
        # in the projection's order of sources (the same every time, and for the notifications
        # the card events before the ledger entries derived from them)
        streams = [source.stream for source in self.projection.sources() if source.stream in work]
        results: dict[str, object] = {}
        applied: dict[str, list[StoredMessage]] = {}
        try:
            async with conn.pipeline():
                await conn.execute(b"BEGIN")
                locks = [await conn.execute(tracking.lock_query(schema), (s,)) for s in streams]
                epoch = await conn.execute(*lease.epoch_query())
            rows = [await cur.fetchone() for cur in locks]
            lease.verify_epoch(await epoch.fetchone())
            for stream, row in zip(streams, rows, strict=True):
                last = row[0] if row is not None else None
                if last is None:  # the stream's first batch: create the row, lock it
                    last = await tracking.lock_position(conn, schema, stream, None, read=False)
                last = int(last)
                if last < self._applied[stream]:
                    raise PositionMoved(
                        f"{schema}.tracking went back from {self._applied[stream]} to {last}"
                    )
                self._applied[stream] = last
                messages = work[stream]
                fresh = [m for m in messages if m.sequence > last]
                self._skipped.inc(len(messages) - len(fresh))
                if not fresh:
                    continue
                keyring = self.store.keyring
                if keyring is not None:
                    refuse_unsealed(keyring, fresh)
                results[stream] = await self.projection.apply(conn, stream, fresh)
                applied[stream] = fresh
            if not applied:
                await conn.execute(b"ROLLBACK")
                return {}
            async with conn.pipeline():
                for stream, done in applied.items():
                    tail = done[-1]
                    await tracking.set_position(conn, schema, stream, tail.sequence, tail.time)
                self._fault.reached("before_commit")
                await conn.execute(b"COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
        for stream, done in applied.items():
            self._applied[stream] = done[-1].sequence
            self._events.inc(len(done))
        return results


async def _rollback(conn: Conn) -> None:
    """End a failed batch's transaction, if the connection still can (else it is closed anyway)."""
    if conn.closed or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return
    with contextlib.suppress(Exception):
        await conn.execute(b"ROLLBACK")


def refuse_unsealed(keyring: Keyring, messages: Sequence[StoredMessage]) -> None:
    """Raise ``Poison`` for the first message whose MAC does not check (``eventstore.integrity``):
    a forged or altered event halts the projection like an undecodable one, before it is applied.
    The live runner and both rebuilds (``jetledger replay``) call it."""
    for message in messages:
        verdict = check_stored(keyring, message)
        if verdict is not Verdict.VALID:
            raise Poison(
                message,
                f"MAC {verdict.value}: not written by the intake, or altered since"
                " (tamper evidence; see docs/security.md)",
            )
