"""The outbox relay: publishes queued ``ledger.entry_created`` events to the derived stream.

Rows are written by the projection in its batch transaction, so no entry's event is ever lost; the
relay publishes them in id order with the event store's lean batch publisher, as one atomic batch
per poll (one fsync for up to 500 entries) with ``Nats-Msg-Id`` = entry id, and deletes them once
JetStream acked.

A crash between a publish and its delete leaves published rows in the outbox. Rather than lean on
the duplicate window, the relay reconciles when it starts: batches are atomic and published in id
order, so if the derived stream's last message is an entry still in the outbox, every row up to
it was published — those are deleted, not sent again. A repeat that slips through anyway (an entry
re-emitted by ``jetledger repair derived`` at the same moment) is dropped by the duplicate window
or, beyond it, by consumers, which are idempotent by entry id. Only the leader runs a relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
import psycopg

from eventstore import DuplicateMessageId, EventStore, OutgoingMessage
from projections.ledger.metrics import LedgerMetrics

log = logging.getLogger(__name__)


class _EntryId(msgspec.Struct):
    entry_id: str = ""


_entry_id = msgspec.json.Decoder(_EntryId)


class OutboxRelay:
    """Moves outbox rows to JetStream, batch by batch, while its projection leads."""

    def __init__(
        self,
        conninfo: str,
        store: EventStore,
        metrics: LedgerMetrics,
        wake: asyncio.Event,
        batch: int = 500,
        idle_seconds: float = 1.0,
    ) -> None:
        self._conninfo = conninfo
        self._store = store
        self._metrics = metrics
        self._wake = wake
        self._batch = batch
        self._idle = idle_seconds
        self._publisher = store.batch_publisher()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop``; errors propagate so the runner restarts its leadership."""
        async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
            await self.reconcile(conn)
            try:
                while not stop.is_set():
                    self._wake.clear()
                    sent = await self.relay_once(conn)
                    if sent < self._batch:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), self._idle)
            finally:
                self._publisher.close()

    async def reconcile(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Delete the rows a crashed relay published but did not delete; return how many."""
        names = self._store.names
        last = await self._store.last_by_subject(names.subjects.all_entries, stream=names.derived)
        if last is None:
            return 0
        try:
            entry = _entry_id.decode(last.data).entry_id
        except msgspec.DecodeError:
            return 0
        cur = await conn.execute(
            "SELECT max(id) FROM ledger_ops.outbox WHERE entry_id = %s", (entry,)
        )
        row = await cur.fetchone()
        if row is None or row[0] is None:
            return 0
        cur = await conn.execute("DELETE FROM ledger_ops.outbox WHERE id <= %s", (row[0],))
        log.info("outbox reconciled", extra={"already_published": cur.rowcount})
        return cur.rowcount

    async def relay_once(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Publish and delete up to one batch of outbox rows; return how many were relayed."""
        cur = await conn.execute(
            "SELECT id, entry_id, subject, payload FROM ledger_ops.outbox ORDER BY id LIMIT %s",
            (self._batch,),
        )
        rows = await cur.fetchall()
        self._metrics.outbox_backlog.set(len(rows))
        if not rows:
            return 0
        messages = [
            OutgoingMessage(subject, bytes(payload), msg_id=entry_id)
            for _, entry_id, subject, payload in rows
        ]
        try:
            await self._publisher.publish(messages)
        except DuplicateMessageId:
            # A batch repeating a recent Nats-Msg-Id is refused whole: publish one by one, and
            # the duplicate window acknowledges the repeats with their original positions.
            await asyncio.gather(*(self._store.append(m) for m in messages))
        await conn.execute(
            "DELETE FROM ledger_ops.outbox WHERE id = ANY(%s)", ([r[0] for r in rows],)
        )
        self._metrics.entries_published.inc(len(rows))
        return len(rows)
