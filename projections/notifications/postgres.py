"""Apply fetched stream messages to the notification projection: one Postgres transaction a batch.

Exactly-once rows (DESIGN §3.7): the tracking row of the message's stream is read ``FOR UPDATE`` and
written in the same transaction as the rows, so a redelivered message (sequence ≤ tracked) is
skipped, and a crash before commit leaves nothing. Notification ids are stable, so the unique
constraint also absorbs a ledger entry that the at-least-once outbox published twice.

Side effects belong to the live projector only (DESIGN §5): with ``side_effects=True`` the same
transaction schedules one webhook delivery per (new notification, endpoint that wants its kind) and
announces it on the wake-up channel; a rebuild passes ``False`` and schedules nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec
import psycopg
from psycopg import sql

from contracts.codec import decode_entry, decode_event, decode_preference_event, encode
from contracts.events import (
    NotificationPreferencesSet,
    PreferenceEvent,
    WebhookEndpointRemoved,
    WebhookEndpointSet,
)
from contracts.subjects import Subjects
from projections.notifications.core import (
    CardState,
    Notification,
    ScopePrefs,
    effective,
    new_card_state,
    on_entry,
    on_source_event,
)
from projections.notifications.schema import check_schema, ops_schema, wake_channel

# Shared by every batch transaction, taken exclusively by a rebuild while it swaps schemas, so the
# swap never interleaves with a live batch (see projections/notifications/rebuild.py).
SWAP_LOCK_KEY: Final = 0x4A4E_5357  # "JNSW"
OPERATOR: Final = ""  # the card_id of the operator's global scope

_card_state_decoder: Final = msgspec.json.Decoder(CardState)


class Message(Protocol):
    """What the projector needs of a stored stream message."""

    @property
    def stream(self) -> str: ...
    @property
    def sequence(self) -> int: ...
    @property
    def subject(self) -> str: ...
    @property
    def data(self) -> bytes: ...


@dataclass
class BatchResult:
    """What one applied batch did."""

    created: list[Notification] = field(default_factory=list)
    deliveries: int = 0
    duplicates: int = 0  # messages at or below the tracked sequence (redeliveries)
    last_sequence: int = 0


@dataclass
class _Scope:
    prefs: ScopePrefs | None = None
    endpoints: set[str] = field(default_factory=set)


class NotificationProjector:
    """Applies batches of one or more streams' messages to the tables in ``schema``."""

    def __init__(self, schema: str, subjects: Subjects, *, side_effects: bool) -> None:
        self.schema = check_schema(schema)
        self.subjects = subjects
        self.side_effects = side_effects
        self._s = sql.Identifier(self.schema)
        self._o = sql.Identifier(ops_schema(self.schema))

    async def apply(
        self, conn: psycopg.AsyncConnection[Any], stream: str, messages: Sequence[Message]
    ) -> BatchResult:
        """Apply ``messages`` of ``stream`` (in sequence order) in one transaction."""
        result = BatchResult()
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (SWAP_LOCK_KEY,))
            last = await self._tracked(conn, stream)
            # A redelivery can repeat a message inside one fetch, too: one copy per sequence.
            unique = {m.sequence: m for m in messages if m.sequence > last}
            fresh = [unique[seq] for seq in sorted(unique)]
            result.duplicates = len(messages) - len(fresh)
            result.last_sequence = max([last, *(m.sequence for m in fresh)])
            if not fresh:
                return result
            cards, scopes = await self._load(conn, fresh)
            notes: dict[str, Notification] = {}
            for msg in fresh:
                for note in await self._one(conn, msg, cards, scopes):
                    notes.setdefault(note.notification_id, note)  # the first copy counts
            await self._save_cards(conn, cards)
            result.created = await self._insert(conn, list(notes.values()))
            if self.side_effects and result.created:
                result.deliveries = await self._schedule(conn, result.created, scopes)
                await conn.execute("SELECT pg_notify(%s, '')", (wake_channel(self.schema),))
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {}.tracking (stream, last_sequence) VALUES (%s, %s)"
                    " ON CONFLICT (stream) DO UPDATE SET last_sequence = EXCLUDED.last_sequence"
                ).format(self._s),
                (stream, result.last_sequence),
            )
        return result

    async def _tracked(self, conn: psycopg.AsyncConnection[Any], stream: str) -> int:
        cur = await conn.execute(
            sql.SQL("SELECT last_sequence FROM {}.tracking WHERE stream = %s FOR UPDATE").format(
                self._s
            ),
            (stream,),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    def _kind_of(self, subject: str) -> str:
        rest = subject[len(self.subjects.prefix) :]
        return rest.split(".", 1)[0]

    async def _load(
        self, conn: psycopg.AsyncConnection[Any], messages: Sequence[Message]
    ) -> tuple[dict[str, CardState], dict[str, _Scope]]:
        """Read the state of every card and scope the batch touches, in two round trips."""
        card_ids: set[str] = set()
        for msg in messages:
            kind = self._kind_of(msg.subject)
            if kind == "card":
                card_ids.add(self.subjects.card_id_of(msg.subject))
            elif kind == "ledger":
                card_ids.add(decode_entry(msg.data).card_id)
            elif kind == "notify":
                card_ids.add(decode_preference_event(msg.data).card_id)
        ids = sorted(card_ids | {OPERATOR})
        cur = await conn.execute(
            sql.SQL("SELECT state::text FROM {}.cards WHERE card_id = ANY(%s)").format(self._s),
            (ids,),
        )
        cards = {
            s.card_id: s for s in (_card_state_decoder.decode(r[0]) for r in await cur.fetchall())
        }
        scopes = {card_id: _Scope() for card_id in ids}
        cur = await conn.execute(
            sql.SQL(
                "SELECT card_id, kinds, low_balance_threshold, low_balance_percent"
                " FROM {}.preferences WHERE card_id = ANY(%s)"
            ).format(self._s),
            (ids,),
        )
        for card_id, kinds, threshold, percent in await cur.fetchall():
            scopes[card_id].prefs = ScopePrefs(
                kinds=None if kinds is None else tuple(kinds),
                low_balance_threshold=threshold,
                low_balance_percent=percent,
            )
        cur = await conn.execute(
            sql.SQL(
                "SELECT card_id, endpoint_id FROM {}.webhook_endpoints WHERE card_id = ANY(%s)"
            ).format(self._s),
            (ids,),
        )
        for card_id, endpoint_id in await cur.fetchall():
            scopes[card_id].endpoints.add(endpoint_id)
        return cards, scopes

    async def _one(
        self,
        conn: psycopg.AsyncConnection[Any],
        msg: Message,
        cards: dict[str, CardState],
        scopes: dict[str, _Scope],
    ) -> list[Notification]:
        kind = self._kind_of(msg.subject)
        if kind == "card":
            event = decode_event(msg.data)  # a poison message raises: the projector stops loudly
            card = cards.setdefault(event.card_id, new_card_state(event.card_id))
            prefs = effective(scopes[event.card_id].prefs, scopes[OPERATOR].prefs)
            return on_source_event(card, event, msg.stream, msg.sequence, prefs)
        if kind == "ledger":
            note = on_entry(decode_entry(msg.data), msg.stream, msg.sequence)
            return [] if note is None else [note]
        if kind == "notify":
            await self._preference(conn, decode_preference_event(msg.data), scopes)
        return []  # command markers and anything else the filter let through tell nobody

    async def _preference(
        self, conn: psycopg.AsyncConnection[Any], event: PreferenceEvent, scopes: dict[str, _Scope]
    ) -> None:
        scope = scopes[event.card_id]
        match event:
            case NotificationPreferencesSet():
                scope.prefs = ScopePrefs(
                    kinds=event.kinds,
                    low_balance_threshold=event.low_balance_threshold,
                    low_balance_percent=event.low_balance_percent,
                )
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {}.preferences (card_id, kinds, low_balance_threshold,"
                        " low_balance_percent) VALUES (%s, %s, %s, %s) ON CONFLICT (card_id) DO"
                        " UPDATE SET kinds = EXCLUDED.kinds,"
                        " low_balance_threshold = EXCLUDED.low_balance_threshold,"
                        " low_balance_percent = EXCLUDED.low_balance_percent"
                    ).format(self._s),
                    (
                        event.card_id,
                        None if event.kinds is None else list(event.kinds),
                        event.low_balance_threshold,
                        event.low_balance_percent,
                    ),
                )
            case WebhookEndpointSet():
                scope.endpoints.add(event.endpoint_id)
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {}.webhook_endpoints (card_id, endpoint_id, url, secret)"
                        " VALUES (%s, %s, %s, %s) ON CONFLICT (card_id, endpoint_id) DO UPDATE"
                        " SET url = EXCLUDED.url, secret = EXCLUDED.secret"
                    ).format(self._s),
                    (event.card_id, event.endpoint_id, event.url, event.secret),
                )
            case WebhookEndpointRemoved():
                scope.endpoints.discard(event.endpoint_id)
                await conn.execute(
                    sql.SQL(
                        "DELETE FROM {}.webhook_endpoints WHERE card_id = %s AND endpoint_id = %s"
                    ).format(self._s),
                    (event.card_id, event.endpoint_id),
                )

    async def _save_cards(
        self, conn: psycopg.AsyncConnection[Any], cards: dict[str, CardState]
    ) -> None:
        if not cards:
            return
        async with conn.cursor() as cur:
            await cur.executemany(
                sql.SQL(
                    "INSERT INTO {}.cards (card_id, state) VALUES (%s, %s::jsonb)"
                    " ON CONFLICT (card_id) DO UPDATE SET state = EXCLUDED.state"
                ).format(self._s),
                [(card_id, encode(state).decode()) for card_id, state in sorted(cards.items())],
            )

    async def _insert(
        self, conn: psycopg.AsyncConnection[Any], notes: list[Notification]
    ) -> list[Notification]:
        """Insert the notifications; return those that were new (in the batch's order)."""
        if not notes:
            return []
        cur = await conn.execute(
            sql.SQL(
                "INSERT INTO {}.notifications (notification_id, card_id, kind, occurred_at,"
                " stream, sequence, sub, body)"
                " SELECT i, c, k, t, st, sq, sb, b::jsonb FROM unnest("
                "%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::text[],"
                " %s::bigint[], %s::smallint[], %s::text[]) AS u(i, c, k, t, st, sq, sb, b)"
                " ON CONFLICT DO NOTHING RETURNING notification_id"
            ).format(self._s),
            (
                [n.notification_id for n in notes],
                [n.card_id for n in notes],
                [n.kind for n in notes],
                [n.occurred_at for n in notes],
                [n.stream for n in notes],
                [n.sequence for n in notes],
                [n.sub for n in notes],
                [encode(n).decode() for n in notes],
            ),
        )
        new = {row[0] for row in await cur.fetchall()}
        return [n for n in notes if n.notification_id in new]

    async def _schedule(
        self,
        conn: psycopg.AsyncConnection[Any],
        notes: list[Notification],
        scopes: dict[str, _Scope],
    ) -> int:
        """Queue one delivery per (new notification, endpoint whose scope wants its kind)."""
        operator = scopes[OPERATOR]
        operator_kinds = effective(operator.prefs, None).kinds
        rows: list[tuple[str, str, str, str, bytes]] = []
        for note in notes:
            scope = scopes.get(note.card_id, _Scope())
            body = encode(note)
            if note.kind in effective(scope.prefs, operator.prefs).kinds:
                rows += [(note.notification_id, note.card_id, note.card_id, e, body)
                         for e in sorted(scope.endpoints)]  # fmt: skip
            if note.kind in operator_kinds:
                rows += [(note.notification_id, note.card_id, OPERATOR, e, body)
                         for e in sorted(operator.endpoints)]  # fmt: skip
        if not rows:
            return 0
        async with conn.cursor() as cur:
            await cur.executemany(
                sql.SQL(
                    "INSERT INTO {}.deliveries (notification_id, card_id, scope, endpoint_id, body)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
                ).format(self._o),
                rows,
            )
        return len(rows)
