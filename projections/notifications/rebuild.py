"""Rebuild the notification projection from the streams, and verify it with an independent fold.

``rebuild`` replays every stream from sequence 1 into a shadow schema with side effects off (no
delivery is queued, nothing is re-sent), then, in one transaction, locks the live tracking table
(``LOCK … IN EXCLUSIVE MODE``: the live runner's next batch waits on its tracking row, readers do
not), catches the shadow up to the streams' current ends and swaps it in by renaming schemas. The
tracking rows travel with the swap, so the live runner skips whatever it reads again up to them.
Where the shadow got ahead of the live runner, the rebuild queues the webhook deliveries of those
notifications in the same transaction: the live runner will skip them, and a side effect is owed
once. Nothing the live runner already handled is queued again.

``fold`` computes the expected notifications in memory with the pure core alone (no SQL), and
``verify`` waits (bounded) until the projection has applied every stream's last message, then
compares that fold with the live table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from contracts.codec import decode_entry, decode_event, decode_preference_event
from contracts.events import NotificationPreferencesSet
from eventstore import EventStore, ReadBatch
from projections import tracking
from projections.notifications.core import (
    CardState,
    Notification,
    ScopePrefs,
    effective,
    new_card_state,
    on_entry,
    on_source_event,
)
from projections.notifications.postgres import OPERATOR, NotificationProjector
from projections.notifications.projection import sources
from projections.notifications.schema import check_schema, ops_schema, projection_ddl, wake_channel
from projections.runner import refuse_unsealed

Conn = psycopg.AsyncConnection[Any]


@dataclass
class Progress:
    """Where a rebuild is: messages applied per stream, out of the streams' ends."""

    phase: str
    applied: int
    target: int
    elapsed: float


@dataclass
class RebuildReport:
    """What a rebuild applied."""

    messages: dict[str, int] = field(default_factory=dict)
    notifications: int = 0
    deliveries: int = 0  # queued for notifications the live runner had not reached
    seconds: float = 0.0


async def rebuild(
    conn: Conn,
    store: EventStore,
    schema: str,
    on_progress: Callable[[Progress], None] | None = None,
) -> RebuildReport:
    """Replay the streams into a shadow of ``schema`` and swap it in; return what was applied.

    ``conn`` must be in autocommit mode (each replayed batch commits on its own).
    """
    live = check_schema(schema)
    shadow = check_schema(f"{live}_shadow")
    started = time.perf_counter()
    report = RebuildReport()
    projector = NotificationProjector(shadow, store.names.subjects, side_effects=False)
    ends = {s.stream: await store.last_sequence(s.stream) for s in sources(store.names)}
    target = sum(ends.values())

    def progress(phase: str) -> None:
        if on_progress is not None:
            applied = sum(report.messages.values())
            on_progress(Progress(phase, applied, target, time.perf_counter() - started))

    async def apply(got: ReadBatch) -> None:
        if got.messages:
            if store.keyring is not None:
                refuse_unsealed(store.keyring, got.messages)  # as the live runner does
            result = await projector.apply(conn, got.stream, got.messages)
            report.notifications += len(result.created)
            last = got.messages[-1]
            await tracking.lock_position(conn, shadow, got.stream)
            await tracking.set_position(conn, shadow, got.stream, last.sequence, last.time)
        report.messages[got.stream] = report.messages.get(got.stream, 0) + len(got.messages)

    async def catch_up(phase: str, in_transaction: bool) -> None:
        for source in sources(store.names):
            after = await tracking.position(conn, shadow, source.stream)
            covered = max(after, report_covered.get(source.stream, 0))
            async for got in store.replay_batches(
                covered, source.filters, stream=source.stream, server_filter=False
            ):
                if in_transaction:
                    await apply(got)
                else:
                    async with conn.transaction():
                        await apply(got)
                report_covered[source.stream] = got.last_sequence
                progress(phase)

    report_covered: dict[str, int] = {}
    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(shadow)))
    await conn.execute(projection_ddl(shadow))
    await catch_up("replay", in_transaction=False)  # the bulk, while the live runner keeps going
    old = sql.Identifier(f"{live}_old")
    async with conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '30s'")
        await conn.execute(
            sql.SQL("LOCK TABLE {}.tracking IN EXCLUSIVE MODE").format(sql.Identifier(live))
        )
        await catch_up("swap", in_transaction=True)  # the tail, with live batches held back
        report.deliveries = await _take_over_side_effects(conn, projector, live, shadow)
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(old))
        await conn.execute(
            sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(live), old)
        )
        await conn.execute(
            sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                sql.Identifier(shadow), sql.Identifier(live)
            )
        )
        await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(old))
    report.seconds = time.perf_counter() - started
    progress("done")
    return report


async def _take_over_side_effects(
    conn: Conn, projector: NotificationProjector, live: str, shadow: str
) -> int:
    """Queue the deliveries of the notifications the shadow holds beyond the live positions.

    The live runner skips what the swapped-in schema already holds, so the webhooks of those
    notifications are the rebuild's to queue (the live runner's position is final: its tracking
    table is locked). Behind or level with the live runner, there is nothing to take over.
    """
    reached = await tracking.positions(conn, live)
    decoder = msgspec.json.Decoder(Notification)
    notes: list[Notification] = []
    for stream, position in (await tracking.positions(conn, shadow)).items():
        if position <= reached.get(stream, 0):
            continue
        cur = await conn.execute(
            sql.SQL(
                "SELECT body::text FROM {}.notifications WHERE stream = %s AND sequence > %s"
                " ORDER BY sequence, sub"
            ).format(sql.Identifier(shadow)),
            (stream, reached.get(stream, 0)),
        )
        notes += [decoder.decode(row[0]) for row in await cur.fetchall()]
    queued = await projector.queue_deliveries(conn, notes, ops_schema(live))
    if queued:
        await conn.execute("SELECT pg_notify(%s, '')", (wake_channel(live),))
    return queued


async def fold(store: EventStore) -> dict[str, Notification]:
    """Compute every notification the streams imply, in memory, with the pure core only."""
    cards: dict[str, CardState] = {}
    prefs: dict[str, ScopePrefs] = {}
    out: dict[str, Notification] = {}
    prefix = store.names.subjects.prefix
    for source in sources(store.names):
        async for got in store.replay_batches(
            0, source.filters, stream=source.stream, server_filter=False
        ):
            for msg in got.messages:
                kind = msg.subject[len(prefix) :].split(".", 1)[0]
                notes: list[Notification] = []
                if kind == "card":
                    event = decode_event(msg.data)
                    card = cards.setdefault(event.card_id, new_card_state(event.card_id))
                    rule = effective(prefs.get(event.card_id), prefs.get(OPERATOR))
                    notes = on_source_event(card, event, msg.stream, msg.sequence, rule)
                elif kind == "notify":
                    pref = decode_preference_event(msg.data)
                    if isinstance(pref, NotificationPreferencesSet):
                        prefs[pref.card_id] = ScopePrefs(
                            kinds=pref.kinds,
                            low_balance_threshold=pref.low_balance_threshold,
                            low_balance_percent=pref.low_balance_percent,
                        )
                elif kind == "ledger":
                    note = on_entry(decode_entry(msg.data), msg.stream, msg.sequence)
                    notes = [] if note is None else [note]
                for note in notes:
                    out.setdefault(note.notification_id, note)
    return out


async def heads(store: EventStore) -> dict[str, int]:
    """Per stream, the sequence of the last message the projection applies (0: none)."""
    out: dict[str, int] = {}
    for source in sources(store.names):
        found = [await store.last_by_subject(f, stream=source.stream) for f in source.filters]
        out[source.stream] = max((m.sequence for m in found if m is not None), default=0)
    return out


async def wait_caught_up(
    conn: Conn, schema: str, wanted: dict[str, int], seconds: float
) -> dict[str, int]:
    """Wait (bounded) until every stream's position reached ``wanted``; return the positions.

    Gives up early when no position moved for three seconds (a stopped projection).
    """
    deadline = time.monotonic() + seconds
    moved_at = time.monotonic()
    before: dict[str, int] = {}
    while True:
        reached = await tracking.positions(conn, schema)
        now = time.monotonic()
        if all(reached.get(s, 0) >= seq for s, seq in wanted.items()):
            return reached
        if reached != before:
            before, moved_at = reached, now
        if now >= deadline or now - moved_at >= 3.0:
            return reached
        await asyncio.sleep(0.05)


async def verify(
    conn: Conn, store: EventStore, schema: str, *, wait_seconds: float = 10.0
) -> list[str]:
    """Compare the live notifications with the independent fold; return the problems found.

    A projection still behind the streams' last messages after ``wait_seconds`` is a problem
    too: rows that are right up to the projection's own position prove nothing past it.
    """
    wanted = await heads(store)
    reached = await wait_caught_up(conn, schema, wanted, wait_seconds)
    problems = [
        f"the notification projection is behind {stream}: at {reached.get(stream, 0)},"
        f" the stream reaches {seq}"
        for stream, seq in wanted.items()
        if reached.get(stream, 0) < seq
    ]
    expected = await fold(store)
    cur = await conn.execute(
        sql.SQL("SELECT body::text FROM {}.notifications").format(
            sql.Identifier(check_schema(schema))
        )
    )
    decoder = msgspec.json.Decoder(Notification)
    actual = {n.notification_id: n for n in (decoder.decode(r[0]) for r in await cur.fetchall())}
    if not problems:  # behind: rows past the position are expected to be missing
        problems += [f"missing {i}" for i in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected {i}" for i in sorted(actual.keys() - expected.keys())]
    problems += [
        f"differs {i}" for i in sorted(expected.keys() & actual.keys()) if expected[i] != actual[i]
    ]
    return problems
