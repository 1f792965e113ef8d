"""The ledger projection as the runner drives it: ``card.>`` of the source stream → Postgres.

``apply`` decodes a batch, loads the balances it touches, runs the pure core (``rows.Projection``)
and writes entries, transactions, card changes and balances with COPY, inside the runner's
transaction (which also holds the tracking row). An undecodable event, or one breaking a ledger
invariant, is a ``Poison`` naming its message. While leading, the relay publishes the committed
entries to the derived stream as ``ledger.entry_created`` (``relay``); a commit wakes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from contracts.codec import UndecodableEvent, decode_event
from contracts.events import SourceEvent
from contracts.subjects import StreamNames
from eventstore import EventStore, StoredMessage
from projections.ledger import store
from projections.ledger.metrics import LedgerMetrics
from projections.ledger.relay import EntryRelay
from projections.ledger.rows import InvalidEvent, Projection, accounts_touched
from projections.ledger.schema import LIVE_SCHEMA, OPS_SCHEMA, PROJECTION_NAME
from projections.model import Conn, Poison, Source


@dataclass(frozen=True, slots=True)
class Applied:
    """What one batch wrote."""

    events: int
    entries: int


class LedgerProjection:
    """Applies card events to the ``ledger`` schema; relays the entries while leading."""

    name = PROJECTION_NAME
    schema = LIVE_SCHEMA
    lease_table = f"{OPS_SCHEMA}.projector_lease"

    def __init__(
        self,
        conninfo: str,
        event_store: EventStore,
        metrics: LedgerMetrics,
        *,
        relay: bool = True,
    ) -> None:
        self._conninfo = conninfo
        self._store = event_store
        self._streams: StreamNames = event_store.names
        self._metrics = metrics
        self._relay = relay
        self._relay_wake = asyncio.Event()
        # unchanged from earlier releases, so old and new instances contend for the same lease
        self.lease_name = f"{PROJECTION_NAME}:{self._streams.source}"

    def sources(self) -> Sequence[Source]:
        """The source stream; the ledger applies card lifecycle and money events."""
        return [Source(self._streams.source, (self._streams.subjects.all_cards,))]

    async def apply(self, conn: Conn, stream: str, messages: Sequence[StoredMessage]) -> Applied:
        """Project ``messages`` (new, in stream order) in the caller's transaction."""
        events: list[tuple[StoredMessage, SourceEvent]] = []
        for message in messages:
            try:
                events.append((message, decode_event(message.data)))
            except UndecodableEvent as exc:
                raise Poison(message, str(exc)) from exc
        accounts: set[str] = set()
        for _, event in events:
            accounts |= accounts_touched(event)
        async with conn.pipeline():  # one round trip for both
            await store.prepare_balance_stage(conn, LIVE_SCHEMA)
            book = await store.load_balances(conn, LIVE_SCHEMA, accounts)
        projection = Projection(book)
        for message, event in events:
            try:
                projection.apply(event, stream, message.sequence)
            except InvalidEvent as exc:
                raise Poison(message, str(exc)) from exc
        rows = projection.rows
        await store.write_rows(conn, LIVE_SCHEMA, rows)
        await store.upsert_balances(conn, LIVE_SCHEMA, book.touched.values(), staged=True)
        return Applied(len(events), len(rows.entries))

    def committed(self, stream: str, result: object) -> None:
        """Count the entries and wake the relay: the new entries are visible now."""
        if isinstance(result, Applied):
            self._metrics.entries_written.inc(result.entries)
            if result.entries:
                self._relay_wake.set()

    async def while_leading(self, stop: asyncio.Event) -> None:
        """Relay the entries to the derived stream until ``stop``."""
        if not self._relay:
            await stop.wait()
            return
        relay = EntryRelay(self._conninfo, self._store, self._metrics, self._relay_wake)
        await relay.run(stop)
