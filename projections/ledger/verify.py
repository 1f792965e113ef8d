"""``jetledger verify``: prove the ledger tables equal an independent fold of the stream.

Reads one consistent snapshot of a projection schema (its position, balances and every entry, in a
REPEATABLE READ transaction), folds the stream up to that position with ``fold.StreamFold``, and
compares per account and currency: posted, pending, available, entry count and entry checksum.
Memory grows with the number of accounts, never with the number of events.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import psycopg
from nats.js import JetStreamContext
from psycopg import sql

from contracts.codec import decode_event
from contracts.subjects import StreamNames
from projections.ledger.fold import StreamFold, checksum_line
from projections.ledger.schema import LIVE_SCHEMA, table
from projections.ledger.source import replay

FIELDS = ("posted", "pending", "available", "entries", "checksum")


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
    """Per-account values read from a projection schema."""

    position: int = 0
    accounts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


@dataclass
class VerifyReport:
    """The outcome of a verify run."""

    stream: str
    position: int
    events: int
    accounts: int
    differences: list[Difference]
    stream_totals: dict[str, int]
    table_totals: dict[str, int]

    @property
    def ok(self) -> bool:
        """True when tables and stream agree and every currency sums to zero."""
        return (
            not self.differences
            and not any(self.stream_totals.values())
            and not any(self.table_totals.values())
        )


async def snapshot(conn: psycopg.AsyncConnection[Any], schema: str, stream: str) -> TableSnapshot:
    """Read the schema's position, balances and entry checksums in one consistent snapshot."""
    snap = TableSnapshot()
    await conn.set_autocommit(False)
    await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
    async with conn.transaction():
        await conn.execute("SET LOCAL TIME ZONE 'UTC'")
        cur = await conn.execute(
            sql.SQL("SELECT last_sequence FROM {} WHERE stream = %s").format(
                table(schema, "tracking")
            ),
            (stream,),
        )
        row = await cur.fetchone()
        snap.position = 0 if row is None else int(row[0])
        cur = await conn.execute(
            sql.SQL("SELECT account_id, currency, posted, pending, available FROM {}").format(
                table(schema, "balances")
            )
        )
        for account_id, currency, posted, pending, available in await cur.fetchall():
            snap.accounts[(account_id, currency)] = {
                "posted": posted,
                "pending": pending,
                "available": available,
                "entries": 0,
                "digest": hashlib.sha256(),
            }
        query = sql.SQL(
            "SELECT stream_sequence, leg_index, transaction_id, account_id, amount, currency,"
            " balance_after, effective_at FROM {} WHERE stream = %s"
            " ORDER BY stream, stream_sequence, leg_index"
        ).format(table(schema, "entries"))
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
                    checksum_line(stream, seq, leg, txid, amount, currency, after, at)
                )
    for acct in snap.accounts.values():
        acct["checksum"] = acct.pop("digest").hexdigest()
    return snap


async def fold_stream(js: JetStreamContext, streams: StreamNames, position: int) -> StreamFold:
    """Fold the source stream's card events up to and including ``position``."""
    fold = StreamFold(streams.source)
    if position > 0:
        async for item in replay(
            js, streams.source, streams.subjects.all_cards, after=0, until=position
        ):
            fold.feed(item.sequence, decode_event(item.data))
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


async def verify(
    conninfo: str,
    js: JetStreamContext,
    streams: StreamNames,
    schema: str = LIVE_SCHEMA,
) -> VerifyReport:
    """Compare a projection schema with an independent fold of the stream up to its position."""
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        snap = await snapshot(conn, schema, streams.source)
    fold = await fold_stream(js, streams, snap.position)
    table_totals: dict[str, int] = {}
    for (_, currency), acct in snap.accounts.items():
        table_totals[currency] = table_totals.get(currency, 0) + (acct["posted"] or 0)
    return VerifyReport(
        stream=streams.source,
        position=snap.position,
        events=fold.events,
        accounts=len(snap.accounts),
        differences=compare(snap, fold),
        stream_totals=fold.totals(),
        table_totals=table_totals,
    )
