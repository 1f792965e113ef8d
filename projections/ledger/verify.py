"""``jetledger verify`` for the ledger: the tables, the stream and the derived stream agree.

1. **Caught up.** The last card event in the stream when verify starts is the *head*; verify waits
   (bounded) until the projection's tracking row reached it and the relay published every entry.
   A projection
   still behind afterwards is a failure: a table that is right "up to its own position" proves
   nothing about events it never applied.
2. **Rows.** One REPEATABLE READ snapshot of the tables (position, balances, every entry through a
   server-side cursor) against ``fold.StreamFold``, an independent fold of the stream up to that
   position: per account and currency, posted, pending, available, entry count and a checksum
   over the entries in stream order. Σ posted per currency must be 0 on both sides.
3. **Derived stream.** Every entry of the snapshot must be in the derived stream exactly once
   and nothing else (``projections.ledger.derived``).

Memory grows with the number of accounts and entries (8 bytes per entry), never with payloads.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from contracts.codec import decode_event
from eventstore import EventStore
from projections import tracking
from projections.ledger.derived import (
    DerivedReport,
    entry_key,
    published_keys,
    relayed_key,
)
from projections.ledger.derived import (
    compare as compare_derived,
)
from projections.ledger.fold import StreamFold, checksum_line
from projections.ledger.schema import LIVE_SCHEMA, table

FIELDS = ("posted", "pending", "available", "entries", "checksum")

STALL_SECONDS = 3.0  # verify stops waiting for a projection that does not move

# on_progress(phase, done, total)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class Difference:
    """One value that differs between the tables and the stream."""

    account_id: str
    currency: str
    field: str
    in_tables: object
    in_stream: object


@dataclass
class TableSnapshot:
    """Per-account values read from a projection schema, its entry keys and queued entries."""

    position: int = 0
    accounts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    entry_keys: array.array[int] = field(default_factory=lambda: array.array("q"))
    relayed: int = -1  # the relay's position (entry key) in the same snapshot


@dataclass
class VerifyReport:
    """The outcome of a verify run."""

    stream: str
    position: int
    head: int
    events: int
    accounts: int
    differences: list[Difference]
    stream_totals: dict[str, int]
    table_totals: dict[str, int]
    derived: DerivedReport | None = None

    @property
    def behind(self) -> bool:
        """True when the projection had not applied the stream's last card event."""
        return self.position < self.head

    @property
    def ok(self) -> bool:
        """True when caught up, tables equal the stream, the books balance, derived matches."""
        return (
            not self.behind
            and not self.differences
            and not any(self.stream_totals.values())
            and not any(self.table_totals.values())
            and (self.derived is None or self.derived.ok)
        )

    def problems(self) -> list[str]:
        """One line per failed check (empty when ``ok``)."""
        out = []
        if self.behind:
            out.append(
                f"the ledger projection is behind the stream: at {self.stream}:{self.position},"
                f" the stream's card events reach {self.head}"
            )
        if self.differences:
            out.append(f"{len(self.differences)} balance values differ from the stream")
        for side, totals in (("stream", self.stream_totals), ("tables", self.table_totals)):
            for currency, total in sorted(totals.items()):
                if total:
                    out.append(f"Σ balances in {currency} per {side} is {total}, not 0")
        if self.derived is not None:
            out += self.derived.problems(self.stream)
        return out


async def snapshot(conn: psycopg.AsyncConnection[Any], schema: str, stream: str) -> TableSnapshot:
    """Read the schema's position, balances, entry checksums and keys in one consistent snapshot."""
    snap = TableSnapshot()
    await conn.set_autocommit(False)
    await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
    async with conn.transaction():
        await conn.execute("SET LOCAL TIME ZONE 'UTC'")
        snap.position = await tracking.position(conn, schema, stream)
        snap.relayed = await relayed_key(conn, stream)
        cur = await conn.execute(
            sql.SQL("SELECT account_id, currency, posted, pending, available FROM {}").format(
                table(schema, "balances")
            )
        )
        for account_id, currency, posted, pending, available in await cur.fetchall():
            snap.accounts[(account_id, currency)] = {
                "posted": int(posted),
                "pending": int(pending),
                "available": int(available),
                "entries": 0,
                "digest": hashlib.sha256(),
            }
        query = sql.SQL(
            "SELECT stream_sequence, leg_index, transaction_id, account_id, amount, currency,"
            " balance_after, effective_at FROM {} WHERE stream = %s"
            " ORDER BY stream, stream_sequence, leg_index"
        ).format(table(schema, "entries"))
        keys = snap.entry_keys
        async with conn.cursor(name="verify_entries") as named:
            await named.execute(query, (stream,))
            async for seq, leg, txid, account, amount, currency, after, at in named:
                acct = snap.accounts.setdefault(
                    (account, currency),
                    {"posted": None, "pending": None, "available": None, "entries": 0,
                     "digest": hashlib.sha256()},
                )  # fmt: skip
                acct["entries"] += 1
                acct["digest"].update(
                    checksum_line(stream, seq, leg, txid, amount, currency, int(after), at)
                )
                keys.append(entry_key(seq, leg))
    for acct in snap.accounts.values():
        acct["checksum"] = acct.pop("digest").hexdigest()
    return snap


async def fold_stream(
    store: EventStore, position: int, on_progress: Progress | None = None
) -> StreamFold:
    """Fold the source stream's card events up to and including ``position``."""
    names = store.names
    fold = StreamFold(names.source)
    if position > 0:
        async for got in store.replay_batches(
            0, [names.subjects.all_cards], until=position, server_filter=False
        ):
            for message in got.messages:
                fold.feed(message.sequence, decode_event(message.data))
            if on_progress is not None:
                on_progress("folding the stream", got.last_sequence, position)
    return fold


def compare(snap: TableSnapshot, fold: StreamFold) -> list[Difference]:
    """List every per-account value that differs between a snapshot and a fold."""
    diffs: list[Difference] = []
    for key in sorted(set(snap.accounts) | set(fold.accounts)):
        live = snap.accounts.get(key)
        folded = fold.accounts.get(key)
        for name in FIELDS:
            in_tables = None if live is None else live[name]
            in_stream = None if folded is None else getattr(folded, name)
            if in_tables != in_stream:
                diffs.append(Difference(key[0], key[1], name, in_tables, in_stream))
    return diffs


async def stream_head(store: EventStore) -> int:
    """The sequence of the last card event in the source stream (0 when there is none)."""
    names = store.names
    last = await store.last_by_subject(names.subjects.all_cards, stream=names.source)
    return 0 if last is None else last.sequence


async def wait_caught_up(
    conninfo: str, schema: str, stream: str, head: int, seconds: float
) -> None:
    """Wait (bounded) until the tracking row reached ``head`` and the relay published it all.

    Gives up early when nothing moved for ``STALL_SECONDS``: a stopped projection will not catch up.
    """
    deadline = time.monotonic() + seconds
    last_seen: tuple[int, int] | None = None
    moved_at = time.monotonic()
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        while True:
            position = await tracking.position(conn, schema, stream)
            cur = await conn.execute(
                sql.SQL(
                    "SELECT stream_sequence, leg_index FROM {} WHERE stream = %s"
                    " ORDER BY stream_sequence DESC, leg_index DESC LIMIT 1"
                ).format(table(schema, "entries")),
                (stream,),
            )
            row = await cur.fetchone()
            last = -1 if row is None else entry_key(int(row[0]), int(row[1]))
            queued = max(0, last - await relayed_key(conn, stream))
            now = time.monotonic()
            if position >= head and not queued:
                return
            if (position, queued) != last_seen:
                last_seen, moved_at = (position, queued), now
            if now >= deadline or now - moved_at >= STALL_SECONDS:
                return
            await asyncio.sleep(0.05)


async def verify(
    conninfo: str,
    store: EventStore,
    schema: str = LIVE_SCHEMA,
    *,
    wait_seconds: float = 10.0,
    derived: bool = True,
    on_progress: Progress | None = None,
) -> VerifyReport:
    """Check the projection schema against the stream and (for the live schema) the derived one."""
    names = store.names
    head = await stream_head(store)
    if on_progress is not None:
        on_progress("waiting for the projection", 0, head)
    await wait_caught_up(conninfo, schema, names.source, head, wait_seconds)
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        snap = await snapshot(conn, schema, names.source)
    fold = await fold_stream(store, snap.position, on_progress)
    table_totals: dict[str, int] = {}
    for (_, currency), acct in snap.accounts.items():
        table_totals[currency] = table_totals.get(currency, 0) + (acct["posted"] or 0)
    report = VerifyReport(
        stream=names.source,
        position=snap.position,
        head=head,
        events=fold.events,
        accounts=len(snap.accounts),
        differences=compare(snap, fold),
        stream_totals=fold.totals(),
        table_totals=table_totals,
    )
    if derived:
        if on_progress is not None:
            on_progress("reading the derived stream", 0, len(snap.entry_keys))
        published, duplicates = await published_keys(store, snap.position)
        report.derived = DerivedReport(snap.position, duplicates=duplicates)
        compare_derived(report.derived, snap.entry_keys, snap.relayed, published)
    return report
