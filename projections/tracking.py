"""A projection's position per stream: ``<schema>.tracking (stream, last_sequence, …)``.

The position is the stream sequence of the last message the projection applied. It is read and
written only inside the transaction that writes the rows it covers (the runner's, a rebuild's), and
its row lock is the first one every batch takes: that serialises the single writer with a deposed
one still finishing a batch and with a rebuild's schema swap.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import sql

from projections.model import Conn


def _table(schema: str) -> sql.Composed:
    return sql.SQL("{}.tracking").format(sql.Identifier(schema))


def lock_query(schema: str) -> sql.Composed:
    """``SELECT last_sequence … FOR UPDATE`` of one stream (parameter: the stream)."""
    return sql.SQL("SELECT last_sequence FROM {} WHERE stream = %s FOR UPDATE").format(
        _table(schema)
    )


async def lock_position(
    conn: Conn, schema: str, stream: str, row: tuple[Any, ...] | None = None, *, read: bool = True
) -> int:
    """Lock this stream's tracking row for the transaction and return its position (0 if none).

    A caller that already ran ``lock_query`` (pipelined with other statements) passes its ``row``
    and ``read=False``; the row is created here only if it is missing."""
    select = lock_query(schema)
    if read:
        cur = await conn.execute(select, (stream,))
        row = await cur.fetchone()
    if row is None:
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (stream, last_sequence) VALUES (%s, 0) ON CONFLICT DO NOTHING"
            ).format(_table(schema)),
            (stream,),
        )
        cur = await conn.execute(select, (stream,))
        row = await cur.fetchone()
        assert row is not None
    return int(row[0])


async def set_position(
    conn: Conn, schema: str, stream: str, sequence: int, event_at: datetime | None
) -> None:
    """Record the new position in the transaction that wrote the rows it covers."""
    await conn.execute(
        sql.SQL(
            "UPDATE {} SET last_sequence = %s, last_event_at = %s, updated_at = now()"
            " WHERE stream = %s"
        ).format(_table(schema)),
        (sequence, event_at, stream),
    )


async def positions(conn: Conn, schema: str) -> dict[str, int]:
    """Every stream's position (no lock)."""
    cur = await conn.execute(sql.SQL("SELECT stream, last_sequence FROM {}").format(_table(schema)))
    return {str(stream): int(seq) for stream, seq in await cur.fetchall()}


async def position(conn: Conn, schema: str, stream: str) -> int:
    """One stream's position (0 if none; no lock)."""
    cur = await conn.execute(
        sql.SQL("SELECT last_sequence FROM {} WHERE stream = %s").format(_table(schema)),
        (stream,),
    )
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])
