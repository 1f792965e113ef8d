"""One active writer per projection: a Postgres advisory lock plus a fencing epoch.

The leader holds ``pg_advisory_lock`` on a dedicated connection for as long as it leads; standbys
poll ``pg_try_advisory_lock`` and take over when that connection goes away (crash, kill -9, network
loss: Postgres drops session locks with the session). The lock alone cannot stop a leader that lost
its lock connection but still has a batch in flight on another, so each new leader also bumps an
epoch in the projection's lease table and every batch transaction checks it (``epoch_query``, ``verify_epoch``): a
deposed leader's commit fails instead of writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

import psycopg
from psycopg import sql

from contracts.errors import Unavailable

log = logging.getLogger(__name__)


class Deposed(Unavailable):
    """This instance is no longer the projection's leader (its epoch was superseded)."""


def lock_key(name: str) -> int:
    """Return a stable signed 64-bit advisory lock key for a lease name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _table(qualified: str) -> sql.Composed:
    schema, _, name = qualified.partition(".")
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


class Lease:
    """Acquire, watch and release the lease ``name``, fenced by an epoch in ``table``."""

    def __init__(
        self, conninfo: str, name: str, table: str, holder: str, poll_seconds: float = 1.0
    ) -> None:
        self._conninfo = conninfo
        self.name = name
        self._table = _table(table)
        self._holder = holder
        self._poll = poll_seconds
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.epoch = 0

    async def acquire(self, stop: asyncio.Event) -> int | None:
        """Wait until this instance leads; return its epoch (None if ``stop`` was set first)."""
        key = lock_key(self.name)
        while not stop.is_set():
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self._conninfo, autocommit=True
                    )
                cur = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                row = await cur.fetchone()
                if row is not None and row[0]:
                    cur = await self._conn.execute(
                        sql.SQL(
                            "INSERT INTO {} (projection, epoch, holder) VALUES (%s, 1, %s)"
                            " ON CONFLICT (projection) DO UPDATE"
                            " SET epoch = {}.epoch + 1, holder = EXCLUDED.holder,"
                            " acquired_at = now() RETURNING epoch"
                        ).format(self._table, self._table),
                        (self.name, self._holder),
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    self.epoch = int(row[0])
                    log.info("projector leads", extra={"lease": self.name, "epoch": self.epoch})
                    return self.epoch
            except psycopg.OperationalError as exc:
                log.warning("lease connection failed", extra={"error": str(exc)})
                await self._close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll)
        return None

    async def alive(self) -> None:
        """Raise ``Deposed`` if the lock connection is gone (the lock went with it)."""
        conn = self._conn
        if conn is None or conn.closed:
            raise Deposed("lease connection closed")
        try:
            await conn.execute("SELECT 1")
        except psycopg.Error as exc:
            await self._close()
            raise Deposed(f"lease connection lost: {exc}") from exc

    def epoch_query(self) -> tuple[sql.Composed, tuple[str]]:
        """The epoch check's statement (and its parameters): the runner pipelines it with
        the batch's first statements and hands the row to ``verify_epoch``."""
        return (
            sql.SQL("SELECT epoch FROM {} WHERE projection = %s FOR SHARE").format(self._table),
            (self.name,),
        )

    def verify_epoch(self, row: tuple[Any, ...] | None) -> None:
        """Raise ``Deposed`` unless ``row`` (of ``epoch_query``) holds our epoch."""
        if row is None or int(row[0]) != self.epoch:
            raise Deposed(f"epoch {self.epoch} superseded by {None if row is None else row[0]}")

    async def release(self) -> None:
        """Give up the lease (closing the session releases the advisory lock)."""
        await self._close()

    async def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = None
