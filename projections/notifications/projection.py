"""The notification projection as the runner drives it: card, preference and entry events → rows.

It reads the source stream (``card.>`` and ``notify.>``) and the derived stream
(``ledger.entry_created.>``); each batch is applied by ``NotificationProjector`` with side effects
on (a webhook delivery queued per new notification and endpoint, a wake-up on commit). What the
service does after a commit (log lines, metrics, waking watchers) is its ``on_committed``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Final

from contracts.subjects import StreamNames
from eventstore import StoredMessage
from projections.model import Conn, Source
from projections.notifications.postgres import BatchResult, NotificationProjector
from projections.notifications.schema import check_schema, ops_schema

PROJECTION_NAME: Final = "notifications"


def sources(streams: StreamNames) -> list[Source]:
    """The streams and subjects the notification projection applies."""
    s = streams.subjects
    return [
        Source(streams.source, (s.all_cards, s.all_notify)),
        Source(streams.derived, (s.all_entries,)),
    ]


class NotificationProjection:
    """Applies notification-relevant events to ``schema`` with webhook deliveries queued."""

    name = PROJECTION_NAME

    def __init__(
        self,
        schema: str,
        streams: StreamNames,
        on_committed: Callable[[str, BatchResult], None] | None = None,
    ) -> None:
        self.schema = check_schema(schema)
        self.lease_name = f"{PROJECTION_NAME}:{schema}"
        self.lease_table = f"{ops_schema(schema)}.projector_lease"
        self._streams = streams
        self._projector = NotificationProjector(schema, streams.subjects, side_effects=True)
        self._on_committed = on_committed

    def sources(self) -> Sequence[Source]:
        """The source stream (cards, preferences) and the derived stream (ledger entries)."""
        return sources(self._streams)

    async def apply(
        self, conn: Conn, stream: str, messages: Sequence[StoredMessage]
    ) -> BatchResult:
        """Apply new messages in the runner's transaction."""
        return await self._projector.apply(conn, stream, messages)

    def committed(self, stream: str, result: object) -> None:
        """Hand the committed batch to the service (log lines, metrics, wake-ups)."""
        if self._on_committed is not None and isinstance(result, BatchResult):
            self._on_committed(stream, result)

    async def while_leading(self, stop: asyncio.Event) -> None:
        """Nothing besides applying: webhooks are sent by every instance's dispatcher."""
        await stop.wait()
