"""Rebuild the notification projection from the streams, and verify it with an independent fold.

``rebuild`` replays every stream from sequence 1 into a shadow schema with side effects off (no
delivery is queued, nothing is re-sent), then takes the swap lock exclusively — live batches hold
it shared, so none is half-way — catches the shadow up to the streams' current ends and swaps it in
by renaming schemas. Tracking rows travel with the swap, so the live projector skips whatever it
redelivers up to them. The operational schema (webhook deliveries) is never touched.

``fold`` computes the expected notifications in memory with the pure core alone (no SQL), and
``verify`` compares that with the live table (DESIGN §3.9).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from contracts.codec import decode_entry, decode_event, decode_preference_event
from contracts.events import NotificationPreferencesSet
from contracts.subjects import StreamNames
from projections.notifications.core import (
    CardState,
    Notification,
    ScopePrefs,
    effective,
    new_card_state,
    on_entry,
    on_source_event,
)
from projections.notifications.postgres import (
    OPERATOR,
    SWAP_LOCK_KEY,
    Message,
    NotificationProjector,
)
from projections.notifications.queries import tracked
from projections.notifications.schema import check_schema, projection_ddl

# (stream, subject filters, from_sequence) -> batches of stored messages
Replay = Callable[[str, Sequence[str], int], AsyncIterator[Sequence[Message]]]


@dataclass
class RebuildReport:
    """What a rebuild applied."""

    messages: dict[str, int] = field(default_factory=dict)
    notifications: int = 0


def consumed(streams: StreamNames) -> list[tuple[str, list[str]]]:
    """The streams and subject filters the notification projection consumes."""
    s = streams.subjects
    return [(streams.source, [s.all_cards, s.all_notify]), (streams.derived, [s.all_entries])]


async def rebuild(
    conn: psycopg.AsyncConnection[Any], replay: Replay, streams: StreamNames, schema: str
) -> RebuildReport:
    """Replay the streams into a shadow of ``schema`` and swap it in; return what was applied."""
    live = check_schema(schema)
    shadow = check_schema(f"{live}_shadow")
    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(shadow)))
    await conn.execute(projection_ddl(shadow))
    projector = NotificationProjector(shadow, streams.subjects, side_effects=False)
    report = RebuildReport()

    async def catch_up() -> None:
        positions = await tracked(conn, shadow)
        for stream, filters in consumed(streams):
            async for batch in replay(stream, filters, positions.get(stream, 0) + 1):
                result = await projector.apply(conn, stream, batch)
                report.messages[stream] = report.messages.get(stream, 0) + len(batch)
                report.notifications += len(result.created)

    await catch_up()  # the bulk, while the live projector keeps going
    await conn.execute("SELECT pg_advisory_lock(%s)", (SWAP_LOCK_KEY,))
    try:
        await catch_up()  # the tail, with live batches held back
        old = sql.Identifier(f"{live}_old")
        async with conn.transaction():
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
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (SWAP_LOCK_KEY,))
    return report


async def fold(replay: Replay, streams: StreamNames) -> dict[str, Notification]:
    """Compute every notification the streams imply, in memory, with the pure core only."""
    cards: dict[str, CardState] = {}
    prefs: dict[str, ScopePrefs] = {}
    out: dict[str, Notification] = {}
    prefix = streams.subjects.prefix
    for stream, filters in consumed(streams):
        async for batch in replay(stream, filters, 1):
            for msg in batch:
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


async def verify(
    conn: psycopg.AsyncConnection[Any], replay: Replay, streams: StreamNames, schema: str
) -> list[str]:
    """Compare the live notifications with the independent fold; return the differences."""
    expected = await fold(replay, streams)
    cur = await conn.execute(
        sql.SQL("SELECT body::text FROM {}.notifications").format(
            sql.Identifier(check_schema(schema))
        )
    )
    decoder = msgspec.json.Decoder(Notification)
    actual = {n.notification_id: n for n in (decoder.decode(r[0]) for r in await cur.fetchall())}
    problems = [f"missing {i}" for i in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected {i}" for i in sorted(actual.keys() - expected.keys())]
    problems += [
        f"differs {i}" for i in sorted(expected.keys() & actual.keys()) if expected[i] != actual[i]
    ]
    return problems
