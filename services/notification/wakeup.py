"""Wake-ups: Postgres LISTEN/NOTIFY fanned out to any number of waiters in this process.

The projector announces each committed batch on the schema's channel (``pg_notify`` inside the
batch transaction, so it fires only on commit). A wake-up carries no data: waiters re-read Postgres
by cursor, so a missed or duplicated wake-up costs latency, never a notification. Waiters also
time out and re-read, which covers a listener that is reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from psycopg import sql

log = logging.getLogger("jetledger.notification.wakeup")


class Waker:
    """A generation counter that waiters can block on until it moves."""

    def __init__(self) -> None:
        self.generation = 0
        self._moved = asyncio.Event()

    def poke(self) -> None:
        """Wake every waiter (something new may be readable)."""
        self.generation += 1
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def wait(self, since: int, max_wait: float) -> None:
        """Return once the generation differs from ``since``, or after ``max_wait`` seconds."""
        if self.generation != since:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._moved.wait(), max_wait)

    async def listen(self, database_url: str, channel: str) -> None:
        """LISTEN on ``channel`` forever (reconnecting), poking waiters on every notification."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    database_url, autocommit=True
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.poke()  # anything committed while we were not listening
                    async for _ in conn.notifies():
                        self.poke()
            except psycopg.Error as exc:
                log.warning("wake-up listener reconnecting", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
