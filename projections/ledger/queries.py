"""The ledger's read side: balances (now, as of an effective time, as known at a position),
keyset-paginated entries, and transactions with their status derived from what followed them.

Each function runs in the caller's transaction; the service opens REPEATABLE READ READ ONLY ones
so the reported position and the rows agree. Queries always name the live schema, so a rebuild's
schema swap is picked up by the next statement.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from contracts.accounts import HOUSE_ACCOUNTS
from contracts.errors import InvalidArgument, NotFound
from projections.ledger.fold import micros
from projections.ledger.rows import account_kind, entry_id

Conn = psycopg.AsyncConnection[Any]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class BalanceView:
    """One currency balance of an account."""

    currency: str
    posted: int
    pending: int
    available: int
    credit_limit: int
    entry_count: int


@dataclass(frozen=True, slots=True)
class EntryView:
    """One journal entry."""

    entry_id: str
    transaction_id: str
    card_id: str
    account_id: str
    amount: int
    currency: str
    direction: str
    balance_after: int
    effective_at: datetime
    stream: str
    stream_sequence: int
    event_type: str


@dataclass(slots=True)
class TransactionView:
    """One transaction row plus what followed it."""

    transaction_id: str
    kind: str
    parent_id: str | None
    card_id: str
    merchant_id: str
    amount: int
    currency: str
    reason: str
    detail: str
    description: str
    effective_at: datetime
    expires_at: datetime | None
    stream: str
    stream_sequence: int
    status: str = ""
    legs: list[EntryView] = field(default_factory=list)
    children: list[TransactionView] = field(default_factory=list)

    def total(self, *kinds: str) -> int:
        """Σ amount of the children of the given kinds."""
        return sum(c.amount for c in self.children if c.kind in kinds)


async def position(conn: Conn, stream: str) -> int:
    """Return the projection's position in ``stream``."""
    cur = await conn.execute(
        "SELECT last_sequence FROM ledger.tracking WHERE stream = %s", (stream,)
    )
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def balances(
    conn: Conn, account_id: str, as_of: datetime | None = None, known_at: int | None = None
) -> list[BalanceView]:
    """Return the account's balances per currency (none yet: an empty list).

    Raises ``NotFound`` only for an account that does not exist: a card never issued, or a house
    account jetledger does not keep. A merchant exists from its id (merchants are not registered)
    and a house account from the start, so before their first entry they answer no balance.
    """
    kind = account_kind(account_id)
    cur = await conn.execute(
        "SELECT currency, posted, pending, available, credit_limit, entry_count"
        " FROM ledger.balances WHERE account_id = %s ORDER BY currency",
        (account_id,),
    )
    current = [
        BalanceView(currency, int(posted), int(pending), int(available), int(limit), count)
        for currency, posted, pending, available, limit, count in await cur.fetchall()
    ]
    if not current:
        if kind == "card":
            raise NotFound(f"card account {account_id} is not in the ledger (no such card)")
        if kind == "house" and account_id not in HOUSE_ACCOUNTS:
            raise NotFound(
                f"{account_id} is not a house account (they are {sorted(HOUSE_ACCOUNTS)})"
            )
        return []
    if as_of is None and known_at is None:
        return current
    is_card = account_id.startswith("card-")
    out = []
    for bal in current:
        args = (account_id, bal.currency, as_of, as_of, known_at, known_at)
        cur = await conn.execute(
            "SELECT coalesce(sum(amount), 0), count(*) FROM ledger.entries"
            " WHERE account_id = %s AND currency = %s"
            " AND (%s::timestamptz IS NULL OR effective_at <= %s)"
            " AND (%s::bigint IS NULL OR stream_sequence <= %s)",
            args,
        )
        posted, count = await cur.fetchone()  # type: ignore[misc]
        cur = await conn.execute(
            "SELECT coalesce(sum(pending_delta), 0),"
            " (array_agg(credit_limit ORDER BY effective_at DESC, stream_sequence DESC)"
            "   FILTER (WHERE credit_limit IS NOT NULL))[1]"
            " FROM ledger.card_changes WHERE account_id = %s AND currency = %s"
            " AND (%s::timestamptz IS NULL OR effective_at <= %s)"
            " AND (%s::bigint IS NULL OR stream_sequence <= %s)",
            args,
        )
        pending, limit = await cur.fetchone()  # type: ignore[misc]
        posted, pending, limit = int(posted), int(pending), int(limit or 0)
        available = posted + limit - pending if is_card else posted
        out.append(BalanceView(bal.currency, posted, pending, available, limit, int(count)))
    return out


class _PageKey(msgspec.Struct, array_like=True, frozen=True):
    at: int  # effective time, µs since the epoch
    stream: str
    sequence: int
    leg: int


def encode_page_token(entry: EntryView) -> str:
    """Return an opaque keyset token that resumes right after ``entry``."""
    key = _PageKey(
        micros(entry.effective_at),
        entry.stream,
        entry.stream_sequence,
        int(entry.entry_id.rsplit(":", 1)[1]),
    )
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).decode()


def _decode_page_token(token: str) -> _PageKey:
    try:
        return msgspec.json.decode(base64.urlsafe_b64decode(token.encode()), type=_PageKey)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidArgument("page_token is not a token this service returned") from exc


_ENTRY_COLUMNS = (
    "stream, stream_sequence, leg_index, transaction_id, card_id, account_id, amount, currency,"
    " direction, balance_after, effective_at, event_type"
)


def _select(columns: str, rest: str) -> sql.Composed:
    """Compose ``SELECT <columns> FROM <rest>`` from this module's constant SQL fragments."""
    return sql.SQL("SELECT {} FROM {}").format(sql.SQL(columns), sql.SQL(rest))


def _entry(row: tuple[Any, ...]) -> EntryView:
    stream, seq, leg, txid, card, account, amount, currency, direction, after, at, tag = row
    return EntryView(
        entry_id(stream, seq, leg), txid, card, account, amount, currency, direction, int(after),
        at, stream, seq, tag,
    )  # fmt: skip


async def entries(
    conn: Conn,
    account_id: str,
    start: datetime | None,
    end: datetime | None,
    page_size: int,
    page_token: str = "",
) -> tuple[list[EntryView], str]:
    """Return one page of an account's entries (oldest first) and the next page's token."""
    account_kind(account_id)
    key = _decode_page_token(page_token) if page_token else None
    after = None if key is None else _EPOCH + timedelta(microseconds=key.at)
    cur = await conn.execute(
        _select(
            _ENTRY_COLUMNS,
            "ledger.entries WHERE account_id = %(a)s"
            " AND (%(start)s::timestamptz IS NULL OR effective_at >= %(start)s)"
            " AND (%(end)s::timestamptz IS NULL OR effective_at < %(end)s)"
            " AND (%(k)s::timestamptz IS NULL OR (effective_at, stream, stream_sequence, leg_index)"
            "   > (%(k)s, %(ks)s, %(kq)s, %(kl)s))"
            " ORDER BY effective_at, stream, stream_sequence, leg_index LIMIT %(n)s",
        ),
        {
            "a": account_id,
            "start": start,
            "end": end,
            "k": after,
            "ks": None if key is None else key.stream,
            "kq": None if key is None else key.sequence,
            "kl": None if key is None else key.leg,
            "n": page_size + 1,
        },
    )
    rows = [_entry(r) for r in await cur.fetchall()]
    if len(rows) > page_size:
        rows = rows[:page_size]
        return rows, encode_page_token(rows[-1])
    return rows, ""


_TX_COLUMNS = (
    "transaction_id, kind, parent_id, card_id, merchant_id, amount, currency, reason, detail,"
    " description, effective_at, expires_at, stream, stream_sequence"
)


def derive_status(tx: TransactionView) -> str:
    """Return a transaction's status from its kind and what followed it."""
    if tx.kind == "decline":
        return "declined"
    if tx.kind in ("void", "expiry"):
        return "completed"
    if tx.kind == "authorization":
        captured = tx.total("capture")
        if any(c.kind == "void" for c in tx.children):
            return "voided"
        if any(c.kind == "expiry" for c in tx.children):
            return "expired"
        if captured >= tx.amount:
            return "captured"
        return "partially_captured" if captured else "authorized"
    refunded = tx.total("refund")
    if refunded and refunded >= tx.amount:
        return "refunded"
    return "partially_refunded" if refunded else "posted"


async def transaction(conn: Conn, transaction_id: str) -> TransactionView:
    """Return a transaction with its legs and followers; raise ``NotFound`` if unknown."""
    cur = await conn.execute(
        _select(
            _TX_COLUMNS,
            "ledger.transactions WHERE transaction_id = %s ORDER BY stream, stream_sequence LIMIT 1",
        ),
        (transaction_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"transaction {transaction_id} is not in the ledger")
    tx = TransactionView(*row)
    cur = await conn.execute(
        _select(
            _TX_COLUMNS, "ledger.transactions WHERE parent_id = %s ORDER BY stream, stream_sequence"
        ),
        (transaction_id,),
    )
    tx.children = [TransactionView(*r) for r in await cur.fetchall()]
    cur = await conn.execute(
        _select(
            _ENTRY_COLUMNS,
            "ledger.entries WHERE transaction_id = %s ORDER BY stream, stream_sequence, leg_index",
        ),
        (transaction_id,),
    )
    tx.legs = [_entry(r) for r in await cur.fetchall()]
    tx.status = derive_status(tx)
    return tx
