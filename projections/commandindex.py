"""The command index: one Postgres row per recorded command id, projected from the source stream.

Every event of a command carries the command's id, type and payload fingerprint
(``contracts.events.Event``), so the card's own history is the record of its commands and no
per-command subject exists. A card's recent commands live in the intake's memory; older ones are
found here (docs/intake.md, idempotency). Rows: ``command_id`` (primary key), ``card_id``,
``command_type``, ``fingerprint``, ``outcome``, ``reason``, ``detail``, ``sequence`` (of the
command's last event) and ``decided_at``. Legacy ``command.<id>`` markers (streams written before
events carried the fingerprint; notification preferences) are indexed too.

An id reused on another card keeps the first card's row (the intake refuses such a reuse whenever it
can see the first; docs/intake.md says when it cannot). The runner (``projections.runner``) drives it
like every projection: one leased writer, its position in ``<schema>.tracking``, contiguous
batches. The transaction service hosts it (``services.commandindex``): it is the intake's own index.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql

from contracts.codec import decode_event, decode_marker
from contracts.events import TransactionDeclined
from contracts.subjects import StreamNames
from eventstore import StoredMessage, subject_matches
from projections.model import Conn, Poison, Source

PROJECTION_NAME: Final = "command_index"
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,40}")
DDL_LOCK_KEY: Final = 0x4A43_4958  # "JCIX"

_DDL: Final = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.tracking (
    stream text PRIMARY KEY,
    last_sequence bigint NOT NULL,
    last_event_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {s}.commands (
    command_id text PRIMARY KEY,
    card_id text NOT NULL,
    command_type text NOT NULL,
    fingerprint text NOT NULL,
    outcome text NOT NULL,
    reason text NOT NULL DEFAULT '',
    detail text NOT NULL DEFAULT '',
    sequence bigint NOT NULL,
    decided_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.projector_lease (
    projection text PRIMARY KEY,
    epoch bigint NOT NULL,
    holder text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
"""

# The last event of a command wins its sequence; another card's use of the id leaves the row alone.
# A batch is one statement over binary arrays (one row per command id: ``merge_rows``); a statement
# per event cost the transaction service ~60 µs of CPU an event, and Postgres a statement each.
_UPSERT_ALL: Final = """
INSERT INTO {s}.commands AS c (command_id, card_id, command_type, fingerprint, outcome, reason,
    detail, sequence, decided_at)
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
    %b::text[], %b::bigint[], %b::timestamptz[])
ON CONFLICT (command_id) DO UPDATE SET sequence = EXCLUDED.sequence, outcome = EXCLUDED.outcome,
    reason = EXCLUDED.reason, detail = EXCLUDED.detail
    WHERE c.card_id = EXCLUDED.card_id AND c.sequence < EXCLUDED.sequence
"""
# The same, one row (for an id reused on another card within a batch).
_UPSERT_ONE: Final = """
INSERT INTO {s}.commands AS c (command_id, card_id, command_type, fingerprint, outcome, reason,
    detail, sequence, decided_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (command_id) DO UPDATE SET sequence = EXCLUDED.sequence, outcome = EXCLUDED.outcome,
    reason = EXCLUDED.reason, detail = EXCLUDED.detail
    WHERE c.card_id = EXCLUDED.card_id AND c.sequence < EXCLUDED.sequence
"""


def check_schema(name: str) -> str:
    """Return ``name`` if it is a safe lower-case schema name, else raise ``ValueError``."""
    if _SCHEMA_NAME.fullmatch(name) is None:
        raise ValueError(f"schema name must match {_SCHEMA_NAME.pattern}, got {name!r}")
    return name


def schema_for(stream: str) -> str:
    """The index's schema for a source stream: ``command_index`` for the default ``LEDGER``."""
    if stream == "LEDGER":
        return "command_index"
    return check_schema(f"command_index_{stream.lower()}"[:41])


async def create_schema(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Create the index's tables if missing (safe with concurrent replicas)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK_KEY,))
        await conn.execute(sql.SQL(_DDL).format(s=sql.Identifier(check_schema(schema))))


Row = tuple[str, str, str, str, str, str, str, int, Any]


def row_of(message: StoredMessage, commands_filter: str) -> Row | None:
    """The index row a stored message implies (None for messages of no command)."""
    if subject_matches(commands_filter, message.subject):
        marker = decode_marker(message.data)
        return (
            marker.command_id,
            marker.card_id,
            marker.command_type,
            marker.fingerprint,
            marker.outcome,
            marker.reason,
            marker.detail,
            message.sequence,
            marker.at,
        )
    event = decode_event(message.data)
    if not event.fingerprint:
        return None  # a legacy event: its command's marker carries the record
    reason, detail = ("", "")
    if isinstance(event, TransactionDeclined):
        reason, detail = event.reason, event.detail
    return (
        event.command_id,
        event.card_id,
        event.command_type,
        event.fingerprint,
        "declined" if isinstance(event, TransactionDeclined) else "accepted",
        reason,
        detail,
        message.sequence,
        event.at,
    )


def merge_rows(rows: Sequence[Row]) -> tuple[list[Row], list[Row]]:
    """Split a batch's rows for writing: one row per command id, as upserting them one after the
    other would leave it (a later event of the command moves its sequence and outcome), for one
    statement — which may not touch a row twice; and, in order, every row of an id that appears
    on more than one card in the batch (a reused id: which card keeps it depends on the table, so
    those go one by one)."""
    merged: dict[str, Row] = {}
    reused: set[str] = set()
    for row in rows:
        first = merged.get(row[0])
        if first is None:
            merged[row[0]] = row
        elif first[1] != row[1]:
            reused.add(row[0])
        elif first[7] < row[7]:
            merged[row[0]] = (*first[:4], *row[4:8], first[8])
    if not reused:
        return list(merged.values()), []
    bulk = [row for key, row in merged.items() if key not in reused]
    return bulk, [row for row in rows if row[0] in reused]


class CommandIndexProjection:
    """Projects every recorded command of the source stream into ``<schema>.commands``."""

    name = PROJECTION_NAME

    def __init__(self, schema: str, streams: StreamNames) -> None:
        self.schema = check_schema(schema)
        self.lease_name = f"{PROJECTION_NAME}:{schema}"
        self.lease_table = f"{schema}.projector_lease"
        self._streams = streams
        self._upsert_all = sql.SQL(_UPSERT_ALL).format(s=sql.Identifier(schema))
        self._upsert_one = sql.SQL(_UPSERT_ONE).format(s=sql.Identifier(schema))

    def sources(self) -> Sequence[Source]:
        s = self._streams.subjects
        return [Source(self._streams.source, (s.all_cards, s.all_commands))]

    async def apply(self, conn: Conn, stream: str, messages: Sequence[StoredMessage]) -> object:
        rows: list[Row] = []
        commands_filter = self._streams.subjects.all_commands
        for message in messages:
            try:
                row = row_of(message, commands_filter)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise Poison(message, f"undecodable: {exc}") from exc
            if row is not None:
                rows.append(row)
        bulk, one_by_one = merge_rows(rows)
        if bulk:
            await conn.execute(
                self._upsert_all, [list(column) for column in zip(*bulk, strict=True)]
            )
        if one_by_one:
            async with conn.cursor() as cur:
                await cur.executemany(self._upsert_one, one_by_one)
        return len(rows)

    def committed(self, stream: str, result: object) -> None:
        """Nothing to do after a commit."""

    async def while_leading(self, stop: asyncio.Event) -> None:
        """Nothing besides applying."""
        await stop.wait()
