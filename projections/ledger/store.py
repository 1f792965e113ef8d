"""Postgres writes of the ledger projection: bulk COPY of rows, balance upserts, the tracking row.

Both the live projector (schema ``ledger``, one transaction per batch) and a rebuild (a shadow
schema) write through these functions, so the two produce byte-identical tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from contracts.codec import encode
from contracts.events import LedgerEntryCreated
from contracts.subjects import Subjects
from projections.ledger.rows import Balance, BalanceBook, Rows
from projections.ledger.schema import table

Conn = psycopg.AsyncConnection[Any]

ENTRY_COLUMNS = (
    "stream",
    "stream_sequence",
    "leg_index",
    "transaction_id",
    "card_id",
    "account_id",
    "amount",
    "currency",
    "direction",
    "balance_after",
    "event_type",
    "effective_at",
)
TRANSACTION_COLUMNS = (
    "stream",
    "stream_sequence",
    "transaction_id",
    "kind",
    "parent_id",
    "card_id",
    "merchant_id",
    "amount",
    "currency",
    "reason",
    "detail",
    "description",
    "event_type",
    "effective_at",
    "expires_at",
)
CARD_CHANGE_COLUMNS = (
    "stream",
    "stream_sequence",
    "account_id",
    "currency",
    "pending_delta",
    "credit_limit",
    "effective_at",
)
BALANCE_COLUMNS = (
    "account_id",
    "currency",
    "kind",
    "card_id",
    "posted",
    "pending",
    "credit_limit",
    "available",
    "entry_count",
    "stream",
    "last_sequence",
    "updated_at",
)


def _copy_stmt(schema: str, name: str, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        table(schema, name), sql.SQL(", ").join(map(sql.Identifier, columns))
    )


async def copy_rows(
    conn: Conn, schema: str, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """COPY ``rows`` into ``schema.name``."""
    async with conn.cursor() as cur, cur.copy(_copy_stmt(schema, name, columns)) as copy:
        for row in rows:
            await copy.write_row(row)


async def write_rows(conn: Conn, schema: str, rows: Rows) -> None:
    """COPY the entries, transactions and card changes of ``rows`` into ``schema``."""
    if rows.entries:
        await copy_rows(conn, schema, "entries", ENTRY_COLUMNS, rows.entries)
    if rows.transactions:
        await copy_rows(conn, schema, "transactions", TRANSACTION_COLUMNS, rows.transactions)
    if rows.card_changes:
        await copy_rows(conn, schema, "card_changes", CARD_CHANGE_COLUMNS, rows.card_changes)


def balance_row(bal: Balance) -> tuple[Any, ...]:
    """Return a balance as a row of ``BALANCE_COLUMNS``."""
    return (
        bal.account_id,
        bal.currency,
        bal.kind,
        bal.card_id,
        bal.posted,
        bal.pending,
        bal.credit_limit,
        bal.available,
        bal.entry_count,
        bal.stream,
        bal.last_sequence,
        bal.updated_at,
    )


async def upsert_balances(conn: Conn, schema: str, balances: Iterable[Balance]) -> None:
    """Write the new values of changed balances (the projector computed them; SQL stores them)."""
    cols = sql.SQL(", ").join(map(sql.Identifier, BALANCE_COLUMNS))
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in BALANCE_COLUMNS[2:]
    )
    stmt = sql.SQL(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (account_id, currency) DO UPDATE SET {}"
    ).format(
        table(schema, "balances"),
        cols,
        sql.SQL(", ").join(sql.Placeholder() * len(BALANCE_COLUMNS)),
        updates,
    )
    params = [balance_row(b) for b in balances]
    if params:
        async with conn.cursor() as cur:
            await cur.executemany(stmt, params)


async def load_balances(conn: Conn, schema: str, account_ids: Iterable[str]) -> BalanceBook:
    """Load the balances of ``account_ids`` (every currency) into a fresh book."""
    book = BalanceBook()
    stmt = sql.SQL(
        "SELECT account_id, currency, kind, card_id, posted, pending, credit_limit, entry_count,"
        " stream, last_sequence, updated_at FROM {} WHERE account_id = ANY(%s)"
    ).format(table(schema, "balances"))
    cur = await conn.execute(stmt, (list(account_ids),))
    for row in await cur.fetchall():
        book.add(Balance(*row))
    return book


async def write_outbox(
    conn: Conn, subjects: Subjects, entries: Sequence[LedgerEntryCreated]
) -> None:
    """Queue ``ledger.entry_created`` events for the relay, in the batch's transaction."""
    if not entries:
        return
    await copy_rows(
        conn,
        "ledger_ops",
        "outbox",
        ("entry_id", "subject", "payload"),
        ((e.entry_id, subjects.entry_created(e.account_id), encode(e)) for e in entries),
    )


async def lock_tracking(conn: Conn, schema: str, stream: str) -> int:
    """Lock this stream's tracking row for the transaction and return its last sequence.

    Taking this row lock first serialises every writer of the projection (a deposed leader, a
    rebuild's swap) before anything else is written.
    """
    stmt = sql.SQL("SELECT last_sequence FROM {} WHERE stream = %s FOR UPDATE").format(
        table(schema, "tracking")
    )
    cur = await conn.execute(stmt, (stream,))
    row = await cur.fetchone()
    if row is None:
        insert = sql.SQL(
            "INSERT INTO {} (stream, last_sequence) VALUES (%s, 0) ON CONFLICT DO NOTHING"
        ).format(table(schema, "tracking"))
        await conn.execute(insert, (stream,))
        cur = await conn.execute(stmt, (stream,))
        row = await cur.fetchone()
        assert row is not None
    return int(row[0])


async def set_tracking(
    conn: Conn, schema: str, stream: str, sequence: int, event_at: datetime | None
) -> None:
    """Record the projection's new position in the same transaction as its rows."""
    stmt = sql.SQL(
        "UPDATE {} SET last_sequence = %s, last_event_at = %s, updated_at = now() WHERE stream = %s"
    ).format(table(schema, "tracking"))
    await conn.execute(stmt, (sequence, event_at, stream))


async def tracking_position(conn: Conn, schema: str, stream: str) -> int:
    """Return the projection's last applied sequence of ``stream`` (0 if none)."""
    stmt = sql.SQL("SELECT last_sequence FROM {} WHERE stream = %s").format(
        table(schema, "tracking")
    )
    cur = await conn.execute(stmt, (stream,))
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])
