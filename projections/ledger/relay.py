"""The relay: publishes ``ledger.entry_created`` for every entry, in order, exactly once.

The entries table is itself the outbox: its rows are written in the projection's batch transaction
(so no entry is ever missed) in stream order, and each holds everything its event says. The relay,
run by the leading instance only, reads the entries after its position (``(stream sequence, leg)``,
by the primary key), publishes them as one ADR-50 atomic batch per round (one fsync for up to 500;
``Nats-Msg-Id`` = entry id) through the event store's lean batch publisher, and records its new
position with the derived stream's sequence in ``ledger_ops.relay_position``.

A crash between a publish and its record leaves the position behind. When the relay starts it
reads the derived stream after the recorded sequence (usually nothing, at most a batch) and takes
the highest entry it finds there as its position: what was published is not sent again, whatever
the duplicate window. (An entry re-emitted by ``jetledger repair derived`` has an older key and
does not move the position.) A rebuild's swap keeps positions valid: entries are identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql

from contracts.codec import encode
from eventstore import DuplicateMessageId, EventStore, OutgoingMessage, Position
from projections.ledger.derived import EVENT_COLUMNS, entry_event, entry_key, split_key
from projections.ledger.metrics import LedgerMetrics
from projections.ledger.schema import LIVE_SCHEMA, table

log = logging.getLogger(__name__)

NOTHING: Final = -1  # the key before every entry


class _Published(msgspec.Struct):
    stream: str = ""
    stream_sequence: int = 0
    entry_id: str = ""


_published = msgspec.json.Decoder(_Published)


async def relay_position(conn: psycopg.AsyncConnection[Any], stream: str) -> tuple[int, int]:
    """The relay's recorded position: (entry key, derived stream sequence); (-1, 0) if none."""
    cur = await conn.execute(
        "SELECT last_sequence, last_leg, derived_sequence FROM ledger_ops.relay_position"
        " WHERE stream = %s",
        (stream,),
    )
    row = await cur.fetchone()
    if row is None:
        return NOTHING, 0
    return entry_key(int(row[0]), int(row[1])), int(row[2])


class EntryRelay:
    """Moves entries to the derived stream, batch by batch, while its projection leads."""

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
        self._stream = store.names.source
        self._metrics = metrics
        self._wake = wake
        self._batch = batch
        self._idle = idle_seconds
        self._publisher = store.batch_publisher()
        self.key = NOTHING
        self.derived_sequence = 0
        self._select = sql.SQL(
            "SELECT {} FROM {} WHERE stream = %s AND (stream_sequence, leg_index) > (%s, %s)"
            " ORDER BY stream_sequence, leg_index LIMIT %s"
        ).format(sql.SQL(EVENT_COLUMNS), table(LIVE_SCHEMA, "entries"))

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop``; errors propagate so the runner restarts its leadership."""
        async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
            try:
                await self.reconcile(conn)
                while not stop.is_set():
                    self._wake.clear()
                    sent = await self.relay_once(conn)
                    if sent < self._batch:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), self._idle)
            finally:
                self._publisher.close()

    async def reconcile(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Start from the recorded position, moved past whatever was published after it."""
        names = self._store.names
        key, after = await relay_position(conn, self._stream)
        found = 0
        async for got in self._store.replay_batches(
            after, [names.subjects.all_entries], stream=names.derived, server_filter=False
        ):
            for message in got.messages:
                entry = _published.decode(message.data)
                if entry.stream == self._stream:
                    leg = int(entry.entry_id.rsplit(":", 1)[1])
                    key = max(key, entry_key(entry.stream_sequence, leg))
                    found += 1
            after = got.last_sequence
        self.key, self.derived_sequence = key, after
        if found:
            log.info("relay reconciled", extra={"published_unrecorded": found})
            await self._record(conn)

    async def relay_once(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Publish up to one batch of entries after the position; return how many."""
        seq, leg = split_key(self.key) if self.key >= 0 else (0, -1)
        cur = await conn.execute(self._select, (self._stream, seq, leg, self._batch))
        rows = await cur.fetchall()
        self._metrics.relay_backlog.set(len(rows))
        if not rows:
            return 0
        subjects = self._store.names.subjects
        messages = []
        for row in rows:
            event = entry_event(self._stream, row)
            messages.append(
                OutgoingMessage(
                    subjects.entry_created(event.account_id), encode(event), msg_id=event.entry_id
                )
            )
        positions = await self._publish(messages)
        last = rows[-1]
        self.key = entry_key(int(last[0]), int(last[1]))
        self.derived_sequence = max(p.sequence for p in positions)
        await self._record(conn)
        self._metrics.entries_published.inc(len(rows))
        return len(rows)

    async def _publish(self, messages: list[OutgoingMessage]) -> list[Position]:
        try:
            return await self._publisher.publish(messages)
        except DuplicateMessageId:
            # Refused whole for repeating a recent Nats-Msg-Id (a repair at the same moment):
            # one by one, the duplicate window answers the repeats with their original positions.
            return list(await asyncio.gather(*(self._store.append(m) for m in messages)))

    async def _record(self, conn: psycopg.AsyncConnection[Any]) -> None:
        seq, leg = split_key(self.key)
        await conn.execute(
            "INSERT INTO ledger_ops.relay_position (stream, last_sequence, last_leg,"
            " derived_sequence) VALUES (%s, %s, %s, %s) ON CONFLICT (stream) DO UPDATE SET"
            " last_sequence = EXCLUDED.last_sequence, last_leg = EXCLUDED.last_leg,"
            " derived_sequence = EXCLUDED.derived_sequence, updated_at = now()",
            (self._stream, seq, leg, self.derived_sequence),
        )
