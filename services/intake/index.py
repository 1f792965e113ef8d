"""The command index as the intake reads it: a small port, and its Postgres adapter.

The index (``projections.commandindex``) is a projection of the source stream: one row per
recorded command id (card, type, fingerprint, outcome, stream sequence) and a position. It answers
what a card's in-memory command log no longer holds. "Absent" is only an answer up to the index's
position: the intake reads the card's family for anything above it (docs/intake.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Protocol

from psycopg import errors, sql
from psycopg_pool import AsyncConnectionPool

from contracts.errors import Unavailable
from services.intake.cards import Recorded

_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,40}")


@dataclass(frozen=True, slots=True)
class IndexAnswer:
    """What the index knows of one id: its record if indexed, and how far the index has read."""

    found: Recorded | None
    position: int  # every command at or below this source-stream sequence is indexed


class CommandIndex(Protocol):
    """Finds a command by id, whatever its card."""

    async def find(self, command_id: str) -> IndexAnswer:
        """Return the indexed record of ``command_id`` (or None) and the index's position."""
        ...


class PostgresCommandIndex:
    """Reads ``<schema>.commands`` and the index's tracking row through a small pool."""

    def __init__(self, pool: AsyncConnectionPool[Any], schema: str, stream: str) -> None:
        self._pool = pool
        self._stream = stream
        if _SCHEMA_NAME.fullmatch(schema) is None:
            raise ValueError(f"bad command index schema name {schema!r}")
        s = sql.Identifier(schema)
        self._query = sql.SQL(
            "SELECT (SELECT last_sequence FROM {s}.tracking WHERE stream = %(stream)s),"
            " c.card_id, c.command_type, c.fingerprint, c.outcome, c.reason, c.detail,"
            " c.sequence, c.decided_at"
            " FROM (SELECT 1) AS one LEFT JOIN {s}.commands AS c ON c.command_id = %(id)s"
        ).format(s=s)

    async def find(self, command_id: str) -> IndexAnswer:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(self._query, {"stream": self._stream, "id": command_id})
                row = await cur.fetchone()
        except errors.UndefinedTable:
            return IndexAnswer(None, 0)  # not created yet: it knows nothing
        except Exception as exc:  # Postgres away, pool timeout: the caller may retry
            raise Unavailable("the command index (Postgres) is unavailable; try again") from exc
        assert row is not None
        position = int(row[0] or 0)
        if row[1] is None:
            return IndexAnswer(None, position)
        return IndexAnswer(
            Recorded(
                command_id=command_id,
                command_type=row[2],
                fingerprint=row[3],
                card_id=row[1],
                outcome=row[4],
                reason=row[5],
                detail=row[6],
                sequence=int(row[7]),
                at=row[8],
            ),
            position,
        )
