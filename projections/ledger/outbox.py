"""The outbox relay: publishes queued ``ledger.entry_created`` events to the derived stream.

Rows are written by the projector in its batch transaction, so no entry's event is ever lost; the
relay publishes them in id order with ``Nats-Msg-Id`` = entry id and deletes them once JetStream
acknowledged them — as one atomic batch per poll, so one fsync covers up to 500 entries. A crash between the publish and the delete publishes again: within the
duplicate window JetStream drops it, beyond it consumers see a duplicate and must be idempotent by
entry id. Only the leading projector runs a relay, so rows are never published concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any, Final

import nats.js.errors
import psycopg
from nats.js import JetStreamContext, api

from contracts.subjects import StreamNames
from projections.ledger.metrics import LedgerMetrics
from projections.ledger.source import sleep_or

log = logging.getLogger(__name__)

MSG_ID_HEADER: Final = api.Header.MSG_ID
# ADR-50 atomic batch headers (nats-py has no helper for them).
BATCH_ID: Final = "Nats-Batch-Id"
BATCH_SEQUENCE: Final = "Nats-Batch-Sequence"
BATCH_COMMIT: Final = "Nats-Batch-Commit"


async def ensure_derived_stream(js: JetStreamContext, streams: StreamNames) -> None:
    """Create the derived stream if nobody has provisioned it yet (idempotent)."""
    try:
        await js.stream_info(streams.derived)
        return
    except nats.js.errors.NotFoundError:
        pass
    config = api.StreamConfig(
        name=streams.derived,
        subjects=streams.subjects.derived_stream_subjects(),
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=120.0,
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
        allow_atomic=True,
    )
    with contextlib.suppress(nats.js.errors.BadRequestError):  # created concurrently
        await js.add_stream(config)


class OutboxRelay:
    """Moves outbox rows to JetStream, batch by batch, while its projector leads."""

    def __init__(
        self,
        conninfo: str,
        js: JetStreamContext,
        streams: StreamNames,
        metrics: LedgerMetrics,
        wake: asyncio.Event,
        batch: int = 500,
        idle_seconds: float = 1.0,
    ) -> None:
        self._conninfo = conninfo
        self._js = js
        self._streams = streams
        self._metrics = metrics
        self._wake = wake
        self._batch = batch
        self._idle = idle_seconds

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop``; errors propagate so the projector restarts its leadership."""
        await ensure_derived_stream(self._js, self._streams)
        async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
            while not stop.is_set():
                self._wake.clear()
                sent = await self.relay_once(conn)
                if sent < self._batch:
                    await sleep_or(self._wake, self._idle)

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
        if not await self._publish_atomic(rows):
            await self._publish_each(rows)
        await conn.execute(
            "DELETE FROM ledger_ops.outbox WHERE id = ANY(%s)", ([r[0] for r in rows],)
        )
        self._metrics.entries_published.inc(len(rows))
        return len(rows)

    async def _publish_atomic(self, rows: list[Any]) -> bool:
        """Publish rows as one atomic batch (one fsync for all); False if the stream refused it.

        JetStream refuses a whole batch that repeats a recent ``Nats-Msg-Id`` (err 10201): that
        happens only after a crash between publish and delete, and the per-message fallback then
        lets the duplicate window drop the repeats one by one.
        """
        nc = self._js._nc
        batch_id = uuid.uuid4().hex
        last = len(rows)
        for index, (_, entry_id, subject, payload) in enumerate(rows, start=1):
            headers = {BATCH_ID: batch_id, BATCH_SEQUENCE: str(index), MSG_ID_HEADER: entry_id}
            if index < last:
                await nc.publish(subject, bytes(payload), headers=headers)
                continue
            headers[BATCH_COMMIT] = "1"
            reply = await nc.request(subject, bytes(payload), timeout=10, headers=headers)
            answer = json.loads(reply.data or b"{}")
            if "error" in answer:
                log.info("atomic outbox batch refused", extra={"error": answer["error"]})
                return False
        return True

    async def _publish_each(self, rows: list[Any]) -> None:
        """Publish rows one by one, pipelined (the duplicate window drops repeats)."""
        stream = self._streams.derived
        await asyncio.gather(
            *(
                self._js.publish(
                    subject, bytes(payload), stream=stream, headers={MSG_ID_HEADER: entry_id}
                )
                for _, entry_id, subject, payload in rows
            )
        )
