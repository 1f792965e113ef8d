"""Read the notification projection: keyset pages, reads after a watch cursor, preferences.

Every function takes an open connection and the projection's schema name, so the gRPC service,
the CLI and the tests share one implementation of each read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql

from projections.notifications.core import Notification, ScopePrefs
from projections.notifications.cursor import Cursor, PageToken
from projections.notifications.schema import check_schema, ops_schema

_decoder: Final = msgspec.json.Decoder(Notification)
# Cursor "sub" at a stream's head: above any notification of the last applied sequence.
HEAD_SUB: Final = 32767


class Endpoint(msgspec.Struct, frozen=True):
    """A webhook endpoint as shown to people: never its secret."""

    endpoint_id: str
    url: str
    secret_fingerprint: str


async def list_notifications(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    *,
    card_id: str = "",
    kinds: Sequence[str] = (),
    page_size: int = 100,
    after: PageToken | None = None,
    newest_first: bool = False,
) -> tuple[list[Notification], PageToken | None]:
    """Return one page ordered by (occurred_at, notification_id) and the next page's keyset."""
    s = sql.Identifier(check_schema(schema))
    where: list[sql.Composable] = [sql.SQL("TRUE")]
    args: list[object] = []
    if card_id:
        where.append(sql.SQL("card_id = %s"))
        args.append(card_id)
    if kinds:
        where.append(sql.SQL("kind = ANY(%s)"))
        args.append(list(kinds))
    if after is not None:
        op = sql.SQL("<" if newest_first else ">")
        where.append(sql.SQL("(occurred_at, notification_id) {} (%s, %s)").format(op))
        args += [after.occurred_at, after.notification_id]
    order = sql.SQL("DESC" if newest_first else "ASC")
    query = sql.SQL(
        "SELECT body::text FROM {}.notifications WHERE {}"
        " ORDER BY occurred_at {}, notification_id {} LIMIT %s"
    ).format(s, sql.SQL(" AND ").join(where), order, order)
    cur = await conn.execute(query, [*args, page_size + 1])
    rows = [_decoder.decode(r[0]) for r in await cur.fetchall()]
    if len(rows) <= page_size:
        return rows, None
    last = rows[page_size - 1]
    return rows[:page_size], PageToken(last.occurred_at, last.notification_id)


async def read_after(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    cursor: Cursor,
    *,
    card_id: str = "",
    kinds: Sequence[str] = (),
    limit: int = 500,
) -> list[Notification]:
    """Return up to ``limit`` notifications after ``cursor``, each stream in sequence order."""
    s = sql.Identifier(check_schema(schema))
    streams = set(cursor.positions) | set(await tracked(conn, schema))
    found: list[Notification] = []
    for stream in sorted(streams):
        sequence, sub = cursor.after(stream)
        where: list[sql.Composable] = [sql.SQL("stream = %s AND (sequence, sub) > (%s, %s)")]
        args: list[object] = [stream, sequence, sub]
        if card_id:
            where.append(sql.SQL("card_id = %s"))
            args.append(card_id)
        if kinds:
            where.append(sql.SQL("kind = ANY(%s)"))
            args.append(list(kinds))
        cur = await conn.execute(
            sql.SQL(
                "SELECT body::text FROM {}.notifications WHERE {} ORDER BY sequence, sub LIMIT %s"
            ).format(s, sql.SQL(" AND ").join(where)),
            [*args, limit - len(found)],
        )
        found += [_decoder.decode(r[0]) for r in await cur.fetchall()]
        if len(found) >= limit:
            break
    return found


async def tracked(conn: psycopg.AsyncConnection[Any], schema: str) -> dict[str, int]:
    """Return the last applied sequence of every stream the projection has consumed."""
    cur = await conn.execute(
        sql.SQL("SELECT stream, last_sequence FROM {}.tracking").format(
            sql.Identifier(check_schema(schema))
        )
    )
    return {str(stream): int(seq) for stream, seq in await cur.fetchall()}


async def head_cursor(conn: psycopg.AsyncConnection[Any], schema: str) -> Cursor:
    """A cursor past everything projected so far (to watch only newer notifications)."""
    return Cursor(
        {stream: (seq, HEAD_SUB) for stream, seq in (await tracked(conn, schema)).items()}
    )


async def get_preferences(
    conn: psycopg.AsyncConnection[Any], schema: str, card_id: str
) -> tuple[ScopePrefs | None, list[Endpoint]]:
    """Return a scope's own preferences (``None`` if never set) and its webhook endpoints."""
    s = sql.Identifier(check_schema(schema))
    cur = await conn.execute(
        sql.SQL(
            "SELECT kinds, low_balance_threshold, low_balance_percent FROM {}.preferences"
            " WHERE card_id = %s"
        ).format(s),
        (card_id,),
    )
    row = await cur.fetchone()
    prefs = (
        None
        if row is None
        else ScopePrefs(
            kinds=None if row[0] is None else tuple(row[0]),
            low_balance_threshold=row[1],
            low_balance_percent=row[2],
        )
    )
    cur = await conn.execute(
        sql.SQL(
            "SELECT endpoint_id, url, secret FROM {}.webhook_endpoints WHERE card_id = %s"
            " ORDER BY endpoint_id"
        ).format(s),
        (card_id,),
    )
    endpoints = [Endpoint(e, url, fingerprint(secret)) for e, url, secret in await cur.fetchall()]
    return prefs, endpoints


def fingerprint(secret: str) -> str:
    """A short, non-reversible tag of a secret (to tell rotations apart)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


class DeliveryRow(msgspec.Struct, frozen=True):
    """One webhook delivery's operational state."""

    delivery_id: int
    notification_id: str
    card_id: str
    scope: str
    endpoint_id: str
    status: str
    attempts: int
    last_http_status: int
    last_error: str
    next_attempt_at: Any
    delivered_at: Any


async def list_deliveries(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    *,
    card_id: str = "",
    status: str = "",
    after_id: int = 0,
    page_size: int = 100,
) -> list[DeliveryRow]:
    """Return deliveries with ``delivery_id > after_id`` (oldest first), optionally filtered."""
    where: list[sql.Composable] = [sql.SQL("delivery_id > %s")]
    args: list[object] = [after_id]
    if card_id:
        where.append(sql.SQL("card_id = %s"))
        args.append(card_id)
    if status:
        where.append(sql.SQL("status = %s"))
        args.append(status)
    cur = await conn.execute(
        sql.SQL(
            "SELECT delivery_id, notification_id, card_id, scope, endpoint_id, status, attempts,"
            " last_http_status, last_error, next_attempt_at, delivered_at FROM {}.deliveries"
            " WHERE {} ORDER BY delivery_id LIMIT %s"
        ).format(sql.Identifier(ops_schema(schema)), sql.SQL(" AND ").join(where)),
        [*args, page_size],
    )
    return [DeliveryRow(*row) for row in await cur.fetchall()]
