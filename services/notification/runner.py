"""Drive the notification projector: durable consumers in, one transaction per batch, ack after.

One active writer (DESIGN §3.8): the runner holds a session-level advisory lock on the connection it
applies batches with; replicas wait for it. On taking the lead it re-anchors each durable consumer
just after the tracking row's position, so Postgres, not the consumer's ack state, says where to
resume. Both streams (source events and derived ledger entries)
are fetched concurrently but applied one batch at a time on that one connection, and a batch is
acked only after its transaction committed: a crash in between redelivers it, and the tracking row
makes the redelivery a no-op (DESIGN §3.7). A message that cannot be decoded stops the projector
loudly (metric, log, health) instead of being skipped (DESIGN §3.10).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from nats.js import JetStreamContext

from contracts.codec import UndecodableEvent
from contracts.subjects import StreamNames
from projections.notifications.core import Notification
from projections.notifications.postgres import NotificationProjector
from projections.notifications.queries import tracked
from services.notification import faults
from services.notification.jetstream import DurableConsumer
from services.notification.metrics import NotificationMetrics
from services.notification.wakeup import Waker

log = logging.getLogger("jetledger.notification.projector")
notification_log = logging.getLogger("jetledger.notification.delivered")

LEADER_LOCK_KEY: Final = 0x4A4E_4C44  # "JNLD", combined with the schema's hash
FETCH_WAIT: Final = 1.0  # seconds a fetch waits for the first message


@dataclass
class RunnerConfig:
    """What the runner consumes and how."""

    database_url: str
    streams: StreamNames
    schema: str
    batch: int = 256
    ack_wait: float = 30.0
    fault: str = ""


class ProjectorRunner:
    """Consumes the source and derived streams into the projection, while it holds the lead."""

    def __init__(
        self,
        js: JetStreamContext,
        config: RunnerConfig,
        metrics: NotificationMetrics,
        waker: Waker,
        on_poison: Callable[[Exception], None] | None = None,
    ) -> None:
        self.js = js
        self.config = config
        self.metrics = metrics
        self.waker = waker
        self.on_poison = on_poison
        self.projector = NotificationProjector(
            config.schema, config.streams.subjects, side_effects=True
        )
        self.leading = asyncio.Event()
        self._apply_lock = asyncio.Lock()

    async def run(self) -> None:
        """Lead and project until cancelled; reconnect after infrastructure errors."""
        while True:
            try:
                await self._lead()
            except UndecodableEvent:
                raise
            except Exception as exc:  # NATS or Postgres went away: the stream still has it all
                log.warning("projector reconnecting", extra={"error": repr(exc)})
                self.leading.clear()
                await asyncio.sleep(1.0)

    async def _lead(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.config.database_url, autocommit=True, prepare_threshold=None
        ) as conn:
            # crc32, not hash(): the key must be the same in every process (hash() is salted).
            key = LEADER_LOCK_KEY ^ zlib.crc32(self.config.schema.encode())
            while True:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                row = await cur.fetchone()
                if row is not None and row[0]:
                    break
                await asyncio.sleep(1.0)  # a standby: another instance is the writer
            log.info("projector leading", extra={"schema": self.config.schema})
            consumers = await self._consumers(await tracked(conn, self.config.schema))
            self.leading.set()
            try:
                async with asyncio.TaskGroup() as group:
                    for consumer in consumers:
                        group.create_task(self._consume(conn, consumer))
            except* Exception as group_error:
                raise group_error.exceptions[0] from None
            finally:
                for consumer in consumers:
                    await consumer.close()

    async def _consumers(self, positions: dict[str, int]) -> list[DurableConsumer]:
        streams, subjects = self.config.streams, self.config.streams.subjects
        durable = f"notifications_{self.config.schema}"
        wanted = [
            (streams.source, [subjects.all_cards, subjects.all_notify]),
            (streams.derived, [subjects.all_entries]),
        ]
        return [
            await DurableConsumer.create(
                self.js,
                stream,
                durable,
                filters,
                ack_wait=self.config.ack_wait,
                start_after=positions.get(stream, 0),
            )
            for stream, filters in wanted
        ]

    async def _consume(self, conn: psycopg.AsyncConnection[Any], consumer: DurableConsumer) -> None:
        while True:
            deliveries = await consumer.fetch(self.config.batch, FETCH_WAIT)
            if not deliveries:
                continue
            async with self._apply_lock:
                try:
                    result = await self.projector.apply(
                        conn, consumer.stream, [d.message for d in deliveries]
                    )
                except UndecodableEvent as exc:
                    self.metrics.poison.inc()
                    log.error(
                        "poison message stops the notification projector",
                        extra={"stream": consumer.stream, "error": str(exc)},
                    )
                    if self.on_poison is not None:
                        self.on_poison(exc)
                    raise
            self.waker.poke()
            self._observe(result.created, result.duplicates)
            faults.after_commit(self.config.fault, len(result.created))
            if faults.should_ack(self.config.fault):
                for delivery in deliveries:
                    await delivery.ack()

    def _observe(self, created: list[Notification], duplicates: int) -> None:
        self.metrics.batches.inc()
        self.metrics.redelivered.inc(duplicates)
        for note in created:
            self.metrics.created.labels(note.kind).inc()
            # The log channel: one structured line per notification (ids, kind, text; the text
            # was redacted by the core and never holds more than a card's last four digits).
            notification_log.info(
                note.message,
                extra={
                    "notification_id": note.notification_id,
                    "card_id": note.card_id,
                    "kind": note.kind,
                    "command_id": note.command_id,
                    "amount": note.amount,
                    "currency": note.currency,
                },
            )
