"""``jetledger replay ledger``: rebuild the projection from sequence 0 into a shadow schema, then
swap it in atomically while the service keeps serving.

1. Create ``ledger_rebuild_<token>`` with the current DDL (no secondary indexes yet).
2. Replay the stream's card events with the event store's ordered reader (whole stream, filtered
   here), projecting with the same pure core as the live projection (``rows.Projection``),
   COPYing rows in chunks. A rebuild publishes nothing: the relay publishes entries by key. Memory holds one chunk plus one balance
   per account, however long the stream is.
3. Build indexes, ANALYZE, catch up with the live projector's position.
4. Swap in one short transaction: ``LOCK ledger.tracking IN EXCLUSIVE MODE`` (the live projector's
   next batch waits; readers do not), replay the last few events, write balances and the tracking
   row, rename ``ledger`` away, rename the shadow to ``ledger``, drop the old one. Statements that
   were waiting resolve the names again after the commit and continue on the new tables.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from contracts.codec import decode_event
from eventstore import EventStore, ReadBatch, StoredMessage
from projections import tracking
from projections.ledger import store
from projections.ledger.rows import BalanceBook, Projection
from projections.ledger.schema import (
    LIVE_SCHEMA,
    projection_indexes_sql,
    projection_tables_sql,
    table,
)
from projections.runner import refuse_unsealed

Conn = psycopg.AsyncConnection[Any]
CATCH_UP_UNDER_LOCK = 2_000  # events: below this gap the catch-up happens inside the swap


@dataclass
class Progress:
    """Where a rebuild is: events applied, the position reached and the target position."""

    phase: str
    events: int
    position: int
    target: int
    elapsed: float

    @property
    def rate(self) -> float:
        """Events per second so far."""
        return self.events / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class RebuildResult:
    """What a finished rebuild did."""

    schema: str
    events: int
    position: int
    seconds: float
    swapped: bool


class Rebuild:
    """One rebuild of the ledger projection of ``streams.source``."""

    def __init__(
        self,
        conninfo: str,
        event_store: EventStore,
        *,
        chunk: int = 5_000,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._store = event_store
        self._streams = event_store.names
        self._chunk = chunk
        self._on_progress = on_progress or (lambda _: None)
        self.shadow = f"ledger_rebuild_{uuid.uuid4().hex[:10]}"
        self._book = BalanceBook()
        self._projection = Projection(self._book)
        self._events = 0
        self._position = 0  # the last card event applied (what the tracking row records)
        self._covered = 0  # the last stream sequence read, card event or not
        self._last_event_at: Any = None
        self._started = time.perf_counter()

    async def run(self, swap: bool = True) -> RebuildResult:
        """Build the shadow schema and (by default) swap it in; drop it on failure."""
        stream = self._streams.source
        async with await psycopg.AsyncConnection.connect(
            self._conninfo, prepare_threshold=None
        ) as conn:
            try:
                async with conn.transaction():
                    await conn.execute(projection_tables_sql(self.shadow).encode())
                target = await self._store.last_sequence(stream)
                await self._replay(conn, target, "replay")
                self._report("index", target)
                async with conn.transaction():
                    await conn.execute(projection_indexes_sql(self.shadow).encode())
                await conn.set_autocommit(True)
                for name in ("entries", "transactions", "card_changes"):
                    await conn.execute(sql.SQL("ANALYZE {}").format(table(self.shadow, name)))
                await conn.set_autocommit(False)
                if swap:
                    await self._catch_up_and_swap(conn)
                else:
                    async with conn.transaction():
                        await self._write_final(conn, self._position)
            except BaseException:
                await conn.rollback()
                await conn.set_autocommit(True)
                await conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.shadow))
                )
                raise
        return RebuildResult(
            LIVE_SCHEMA if swap else self.shadow,
            self._events,
            self._position,
            time.perf_counter() - self._started,
            swap,
        )

    async def _replay(self, conn: Conn, until: int, phase: str) -> None:
        pending = 0
        # The bulk is read in a worker process: reading then costs this process almost nothing.
        async for got in self._read(until, in_worker=phase == "replay"):
            pending += self._project(got.messages)
            self._covered = got.last_sequence
            if pending >= self._chunk:
                await self._flush(conn)
                pending = 0
                self._report(phase, until)
        await self._flush(conn)
        self._report(phase, until)

    def _read(self, until: int, in_worker: bool = False) -> AsyncIterator[ReadBatch]:
        return self._store.replay_batches(
            self._covered,
            [self._streams.subjects.all_cards],
            until=until,
            server_filter=False,
            in_worker=in_worker,
        )

    def _project(self, messages: list[StoredMessage]) -> int:
        stream = self._streams.source
        if self._store.keyring is not None:
            refuse_unsealed(self._store.keyring, messages)  # a forged event is never rebuilt in
        apply = self._projection.apply
        for message in messages:
            apply(decode_event(message.data), stream, message.sequence)
        if messages:
            self._position = messages[-1].sequence
            self._last_event_at = messages[-1].time
            self._events += len(messages)
        return len(messages)

    async def _flush(self, conn: Conn) -> None:
        # A shadow nobody reads yet: each chunk commits on its own (bounded transaction size).
        async with conn.transaction():
            await store.write_rows(conn, self.shadow, self._projection.rows)
        self._projection.rows.clear()

    async def _write_final(self, conn: Conn, position: int) -> None:
        await store.copy_rows(
            conn,
            self.shadow,
            "balances",
            store.BALANCE_COLUMNS,
            (store.balance_row(b) for b in self._book.balances.values()),
        )
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (stream, last_sequence, last_event_at) VALUES (%s, %s, %s)"
            ).format(table(self.shadow, "tracking")),
            (self._streams.source, position, self._last_event_at),
        )

    async def _catch_up_and_swap(self, conn: Conn) -> None:
        stream = self._streams.source
        while True:
            live = await self._live_position(conn)
            if live - self._covered <= CATCH_UP_UNDER_LOCK:
                break
            await self._replay(conn, live, "catch-up")
        self._report("swap", live)
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '30s'")
            await conn.execute(
                sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(table(LIVE_SCHEMA, "tracking"))
            )
            live = await tracking.position(conn, LIVE_SCHEMA, stream)
            if live > self._covered:
                async for got in self._read(live):
                    self._project(got.messages)
                    self._covered = got.last_sequence
                await store.write_rows(conn, self.shadow, self._projection.rows)
                self._projection.rows.clear()
            # Never move the projection backwards: a lagging live projection skips what we hold.
            # The relay publishes entries by key from the table, whoever wrote them.
            self._position = max(self._position, live)
            await self._write_final(conn, self._position)
            retired = f"ledger_retired_{self.shadow.rsplit('_', 1)[1]}"
            await conn.execute(
                sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                    sql.Identifier(LIVE_SCHEMA), sql.Identifier(retired)
                )
            )
            await conn.execute(
                sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                    sql.Identifier(self.shadow), sql.Identifier(LIVE_SCHEMA)
                )
            )
            await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(retired)))
        self._report("done", self._position)

    async def _live_position(self, conn: Conn) -> int:
        async with conn.transaction():
            return await tracking.position(conn, LIVE_SCHEMA, self._streams.source)

    def _report(self, phase: str, target: int) -> None:
        self._on_progress(
            Progress(
                phase, self._events, self._position, target, time.perf_counter() - self._started
            )
        )


async def compare_schemas(conn: Conn, left: str, right: str) -> dict[str, tuple[int, int]]:
    """Return, per projection table, rows only in ``left`` and only in ``right`` (EXCEPT ALL)."""
    out: dict[str, tuple[int, int]] = {}
    for name in ("entries", "balances", "transactions", "card_changes", "tracking"):
        cols = sql.SQL("*")
        if name == "tracking":
            cols = sql.SQL("stream, last_sequence")
        counts = []
        for a, b in ((left, right), (right, left)):
            cur = await conn.execute(
                sql.SQL(
                    "SELECT count(*) FROM (SELECT {c} FROM {a} EXCEPT ALL SELECT {c} FROM {b}) d"
                ).format(c=cols, a=table(a, name), b=table(b, name))
            )
            row = await cur.fetchone()
            counts.append(0 if row is None else int(row[0]))
        out[name] = (counts[0], counts[1])
    return out
