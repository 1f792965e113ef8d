"""The derived stream against the entries table: what ``verify`` checks, ``repair derived`` fixes.

Every entry in ``ledger.entries`` must be in the derived stream exactly once as a
``ledger.entry_created`` event, except the ones after the relay's position (not published yet);
nothing else may be there. Entries are compared by their key, ``(source sequence, leg)`` packed in one integer, in
sorted arrays (8 bytes an entry on each side, whatever the payloads).

``repair_derived`` re-emits the entries missing from the stream (entries a rebuild of an older
release wrote without publishing, or a stream an operator re-created). It publishes
only what a fresh scan finds missing, with ``Nats-Msg-Id`` = entry id, so running it twice, or
long after the duplicate window, adds nothing twice; consumers are idempotent by entry id anyway.
"""

from __future__ import annotations

import array
import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql

from contracts.codec import encode
from contracts.events import LedgerEntryCreated
from eventstore import EventStore, OutgoingMessage
from projections.ledger.rows import entry_id
from projections.ledger.schema import LIVE_SCHEMA, table

log = logging.getLogger(__name__)

LEG_SLOTS: Final = 256  # legs of one event, far more than any event has


def entry_key(sequence: int, leg: int) -> int:
    """Pack an entry's source position into one sortable integer."""
    if not 0 <= leg < LEG_SLOTS:
        raise ValueError(f"leg index {leg} out of range")
    return sequence * LEG_SLOTS + leg


def split_key(key: int) -> tuple[int, int]:
    """Unpack ``entry_key``."""
    return divmod(key, LEG_SLOTS)


class _Published(msgspec.Struct):
    stream: str = ""
    stream_sequence: int = 0
    entry_id: str = ""


_published = msgspec.json.Decoder(_Published)


@dataclass
class DerivedReport:
    """How the derived stream compares with the entries table up to a position."""

    position: int
    entries: int = 0
    published: int = 0
    pending: int = 0  # after the relay's position: published soon (or the relay is not running)
    missing: list[int] = field(default_factory=list)  # entry keys absent from the stream
    unexpected: int = 0  # entries in the stream that the table does not hold
    duplicates: int = 0  # entries in the stream more than once

    @property
    def ok(self) -> bool:
        """True when the stream holds exactly the table's entries, none still queued."""
        return not (self.missing or self.unexpected or self.duplicates or self.pending)

    def problems(self, stream: str) -> list[str]:
        """One line per kind of difference."""
        out = []
        if self.missing:
            seq, leg = split_key(self.missing[0])
            out.append(
                f"{len(self.missing)} entries are missing from the derived stream (first:"
                f" {entry_id(stream, seq, leg)}); `jetledger repair derived` re-emits them"
            )
        if self.unexpected:
            out.append(f"{self.unexpected} entries in the derived stream are not in the table")
        if self.duplicates:
            out.append(f"{self.duplicates} entries are in the derived stream more than once")
        if self.pending:
            out.append(
                f"the derived stream is behind: {self.pending} entries are not published yet"
                " (the ledger service's relay publishes them: is it running?)"
            )
        return out


async def published_keys(store: EventStore, position: int) -> tuple[array.array[int], int]:
    """Read the derived stream: sorted keys of the source stream's entries up to ``position``.

    Returns the keys (each once) and how many repeats were dropped.
    """
    names = store.names
    keys: array.array[int] = array.array("q")
    async for got in store.replay_batches(
        0, [names.subjects.all_entries], stream=names.derived, server_filter=False
    ):
        for message in got.messages:
            entry = _published.decode(message.data)
            if entry.stream != names.source or entry.stream_sequence > position:
                continue
            leg = int(entry.entry_id.rsplit(":", 1)[1])
            keys.append(entry_key(entry.stream_sequence, leg))
    ordered = sorted(keys)
    unique: array.array[int] = array.array("q")
    duplicates = 0
    previous = -1
    for key in ordered:
        if key == previous:
            duplicates += 1
            continue
        unique.append(key)
        previous = key
    return unique, duplicates


def compare(
    report: DerivedReport,
    table_keys: Iterable[int],
    relayed: int,
    published: array.array[int],
) -> None:
    """Fill ``report`` from sorted table keys, the relay's position and sorted published keys."""
    report.published = len(published)
    i = 0
    n = len(published)
    for key in table_keys:
        report.entries += 1
        while i < n and published[i] < key:
            report.unexpected += 1
            i += 1
        if i < n and published[i] == key:
            i += 1
        elif key > relayed:
            report.pending += 1
        else:
            report.missing.append(key)
    report.unexpected += n - i


async def relayed_key(conn: psycopg.AsyncConnection[Any], stream: str) -> int:
    """The key of the last entry the relay recorded as published (-1 when none)."""
    cur = await conn.execute(
        "SELECT last_sequence, last_leg FROM ledger_ops.relay_position WHERE stream = %s",
        (stream,),
    )
    row = await cur.fetchone()
    return -1 if row is None else entry_key(int(row[0]), int(row[1]))


EVENT_COLUMNS: Final = (
    "stream_sequence, leg_index, transaction_id, card_id, account_id, amount, currency,"
    " balance_after, event_type, effective_at"
)


async def repair_derived(conninfo: str, store: EventStore, position: int) -> int:
    """Re-emit the entries up to ``position`` that the derived stream lacks; return how many."""
    stream = store.names.source
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        async with conn.transaction():
            relayed = await relayed_key(conn, stream)
            cur = await conn.execute(
                sql.SQL(
                    "SELECT stream_sequence, leg_index FROM {} WHERE stream = %s"
                    " AND stream_sequence <= %s ORDER BY stream_sequence, leg_index"
                ).format(table(LIVE_SCHEMA, "entries")),
                (stream, position),
            )
            keys = [entry_key(int(s), int(leg)) for s, leg in await cur.fetchall()]
        published, _ = await published_keys(store, position)
        report = DerivedReport(position)
        compare(report, keys, relayed, published)
        for start in range(0, len(report.missing), 500):
            chunk = report.missing[start : start + 500]
            cur = await conn.execute(
                sql.SQL(
                    "SELECT {} FROM {} WHERE stream = %s AND (stream_sequence, leg_index) IN"
                    " (SELECT * FROM unnest(%s::bigint[], %s::smallint[]))"
                    " ORDER BY stream_sequence, leg_index"
                ).format(sql.SQL(EVENT_COLUMNS), table(LIVE_SCHEMA, "entries")),
                (stream, [split_key(k)[0] for k in chunk], [split_key(k)[1] for k in chunk]),
            )
            messages = [_outgoing(store, entry_event(stream, row)) for row in await cur.fetchall()]
            # Single appends, pipelined: a repeat inside the window is answered, not refused.
            await asyncio.gather(*(store.append(message) for message in messages))
    log.info("derived stream repaired", extra={"re_emitted": len(report.missing)})
    return len(report.missing)


def entry_event(stream: str, row: tuple[Any, ...]) -> LedgerEntryCreated:
    """The ``ledger.entry_created`` event of an entries row (columns as ``EVENT_COLUMNS``)."""
    seq, leg, txid, card, account, amount, currency, after, tag, at = row
    return LedgerEntryCreated(
        entry_id=entry_id(stream, seq, leg),
        transaction_id=txid,
        card_id=card,
        account_id=account,
        amount=int(amount),
        currency=currency,
        balance_after=int(after),
        event_type=tag,
        effective_at=at,
        stream=stream,
        stream_sequence=int(seq),
    )


def _outgoing(store: EventStore, event: LedgerEntryCreated) -> OutgoingMessage:
    subject = store.names.subjects.entry_created(event.account_id)
    return OutgoingMessage(subject, encode(event), msg_id=event.entry_id)
