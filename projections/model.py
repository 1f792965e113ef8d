"""What a projection is to the runner: the streams it reads, and a function that applies a batch.

A projection (the ledger, the notifications) is a set of Postgres tables in one schema, a
``<schema>.tracking`` table holding its position per stream, and an ``apply`` function that turns
one batch of stored messages into rows inside the runner's transaction. Everything else — which
instance writes, where reading resumes, when a batch is acknowledged, what happens on a poison
message, the lag metrics — is the runner's (``projections.runner``), the same for every projection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from contracts.errors import LedgerError
from eventstore import StoredMessage

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class Source:
    """One stream a projection reads, and the subjects of it that it applies."""

    stream: str
    filters: tuple[str, ...] = field(default_factory=tuple)


class Poison(LedgerError):
    """A stored message the projection cannot apply (undecodable, or breaking an invariant).

    It stops the projection loudly and for good (until a fix is deployed): it is never skipped.
    """

    def __init__(self, message: StoredMessage, reason: str) -> None:
        super().__init__(
            f"poison message at {message.stream}:{message.sequence} ({message.subject}): {reason}"
        )
        self.message = message
        self.reason = reason


class Projection(Protocol):
    """A projection as the runner drives it."""

    @property
    def name(self) -> str:
        """A short name: the metric label, the durable consumers' prefix."""
        ...

    @property
    def schema(self) -> str:
        """The schema holding the projection's tables and its ``tracking`` table."""
        ...

    @property
    def lease_name(self) -> str:
        """The single-writer lease (one active writer per projection and deployment)."""
        ...

    @property
    def lease_table(self) -> str:
        """``schema.table`` of the lease's fencing epoch (an operational schema)."""
        ...

    def sources(self) -> Sequence[Source]:
        """The streams to read and the subjects to apply."""
        ...

    async def apply(self, conn: Conn, stream: str, messages: Sequence[StoredMessage]) -> object:
        """Write what ``messages`` (in stream order, all new) imply, in the caller's transaction.

        Raise ``Poison`` naming the first message that cannot be applied.
        """
        ...

    def committed(self, stream: str, result: object) -> None:
        """Run after the batch's commit (side effects that must not precede it: wake-ups, logs)."""
        ...

    async def while_leading(self, stop: asyncio.Event) -> None:
        """Work only the leader does, next to applying (e.g. an outbox relay); return on ``stop``."""
        ...
