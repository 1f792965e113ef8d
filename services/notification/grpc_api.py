"""The gRPC face of the notification service: ``jetledger.notification.v1.NotificationService``.

Reads go to Postgres through ``projections.notifications.queries``; preference changes go to the
stream through ``PreferenceCommands``. Domain errors become statuses through the one table in
``services.grpc_errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg_pool import AsyncConnectionPool

from contracts.errors import InvalidArgument, LedgerError
from contracts.ids import check_id
from jetledger.notification.v1 import notification_pb2 as pb
from jetledger.notification.v1 import notification_pb2_grpc as pb_grpc
from projections.freshness import wait_until_covered
from projections.notifications import queries
from projections.notifications.core import Notification, ScopePrefs, effective
from projections.notifications.cursor import (
    decode_cursor,
    decode_page_token,
    encode_token,
)
from projections.outage import database_outage_as_unavailable
from services.grpc_errors import status_for, translate_errors
from services.notification.metrics import NotificationMetrics
from services.notification.preferences import CommandResult, PreferenceCommands
from services.notification.wakeup import Waker

SERVICE_NAME: Final = "jetledger.notification.v1.NotificationService"
MAX_PAGE: Final = 1000
WATCH_IDLE: Final = 5.0  # seconds between re-reads when no wake-up comes (a safety net)
_KIND_PREFIX: Final = "NOTIFICATION_KIND_"


def kind_to_pb(kind: str) -> pb.NotificationKind.ValueType:
    """Map a kind name ("purchase") to its enum value."""
    return pb.NotificationKind.Value(_KIND_PREFIX + kind.upper())


def kinds_from_pb(values: Any) -> tuple[str, ...]:
    """Map enum values to kind names; UNSPECIFIED or unknown values are invalid."""
    names = []
    for value in values:
        name = pb.NotificationKind.Name(value) if value in pb.NotificationKind.values() else ""
        if not name.startswith(_KIND_PREFIX) or value == pb.NOTIFICATION_KIND_UNSPECIFIED:
            raise InvalidArgument(f"unknown notification kind {value}")
        names.append(name.removeprefix(_KIND_PREFIX).lower())
    return tuple(names)


def _timestamp(value: Any) -> Timestamp:
    stamp = Timestamp()
    if value is not None:
        stamp.FromDatetime(value)
    return stamp


def notification_to_pb(note: Notification, cursor: str = "") -> pb.Notification:
    """Convert a stored notification to its wire form."""
    return pb.Notification(
        notification_id=note.notification_id,
        card_id=note.card_id,
        kind=kind_to_pb(note.kind),
        occurred_at=_timestamp(note.occurred_at),
        message=note.message,
        amount=note.amount,
        currency=note.currency,
        merchant_id=note.merchant_id,
        reason=note.reason,
        last4=note.last4,
        balance=note.balance,
        command_id=note.command_id,
        source_event_type=note.source_event_type,
        stream=note.stream,
        stream_sequence=note.sequence,
        cursor=cursor,
    )


def _result(result: CommandResult) -> pb.CommandResult:
    return pb.CommandResult(
        command_id=result.command_id,
        stream_sequence=result.stream_sequence,
        stream=result.stream,
        replayed=result.replayed,
    )


def _scope(card_id: str) -> str:
    return check_id(card_id, "card_id") if card_id else ""


def _page_size(requested: int) -> int:
    if requested < 0 or requested > MAX_PAGE:
        raise InvalidArgument(f"page_size must be 0..{MAX_PAGE}")
    return requested or 100


class NotificationServicer(pb_grpc.NotificationServiceServicer):
    """Serves notifications, their live stream, preferences and delivery state."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        schema: str,
        source_stream: str,
        commands: PreferenceCommands,
        waker: Waker,
        metrics: NotificationMetrics,
        max_wait: float = 10.0,
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.source_stream = source_stream
        self.commands = commands
        self.waker = waker
        self.metrics = metrics
        self.max_wait = max_wait

    @contextlib.asynccontextmanager
    async def _db(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; a Postgres outage becomes UNAVAILABLE, not UNKNOWN."""
        async with (
            database_outage_as_unavailable("the notification service"),
            self.pool.connection() as conn,
        ):
            yield conn

    async def _wait_for(self, sequence: int) -> None:
        """Read-your-writes: wait (bounded) until the projection covers ``sequence``."""
        if not sequence:
            return
        store = self.commands.store
        subjects = store.names.subjects

        async def applied() -> int:
            async with self._db() as c:
                return (await queries.tracked(c, self.schema)).get(self.source_stream, 0)

        async def wake(seconds: float) -> None:
            await self.waker.wait(self.waker.generation, seconds)

        await wait_until_covered(
            sequence,
            stream=self.source_stream,
            filters=[subjects.all_cards, subjects.all_notify],
            applied=applied,
            store=store,
            budget_seconds=self.max_wait,
            wait=wake,
            what="the notification projection",
        )

    @translate_errors
    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: Any
    ) -> pb.ListNotificationsResponse:
        card_id = _scope(request.card_id)
        kinds = kinds_from_pb(request.kinds)
        size = _page_size(request.page_size)
        after = decode_page_token(request.page_token)
        await self._wait_for(request.min_stream_sequence)
        async with self._db() as conn:
            head = await queries.head_cursor(conn, self.schema)
            rows, following = await queries.list_notifications(
                conn,
                self.schema,
                card_id=card_id,
                kinds=kinds,
                page_size=size,
                after=after,
                newest_first=request.newest_first,
            )
        return pb.ListNotificationsResponse(
            notifications=[notification_to_pb(n) for n in rows],
            next_page_token="" if following is None else encode_token(following),
            watch_cursor=encode_token(head),
        )

    async def WatchNotifications(
        self, request: pb.WatchNotificationsRequest, context: Any
    ) -> AsyncIterator[pb.WatchNotificationsResponse]:
        try:
            card_id = _scope(request.card_id)
            kinds = kinds_from_pb(request.kinds)
            cursor = decode_cursor(request.cursor)
            if not request.cursor and request.from_now:
                async with self._db() as conn:
                    cursor = await queries.head_cursor(conn, self.schema)
        except LedgerError as exc:
            await context.abort(status_for(exc), str(exc))
            return
        self.metrics.watchers.inc()
        try:
            while True:
                since = self.waker.generation
                async with self._db() as conn:
                    rows = await queries.read_after(
                        conn, self.schema, cursor, card_id=card_id, kinds=kinds
                    )
                for note in rows:
                    cursor = cursor.advanced(note.stream, note.sequence, note.sub)
                    yield pb.WatchNotificationsResponse(
                        notification=notification_to_pb(note, encode_token(cursor))
                    )
                if not rows:
                    await self.waker.wait(since, WATCH_IDLE)
        except asyncio.CancelledError:
            raise  # the client went away
        except LedgerError as exc:  # e.g. Postgres went away: the client resumes from its cursor
            await context.abort(status_for(exc), str(exc))
        finally:
            self.metrics.watchers.dec()

    @translate_errors
    async def SetPreferences(
        self, request: pb.SetPreferencesRequest, context: Any
    ) -> pb.SetPreferencesResponse:
        result = await self.commands.set_preferences(
            request.command_id,
            request.card_id,
            kinds_from_pb(request.kinds) if request.kinds_set else None,
            request.low_balance_threshold if request.HasField("low_balance_threshold") else None,
            request.low_balance_percent if request.HasField("low_balance_percent") else None,
        )
        return pb.SetPreferencesResponse(result=_result(result))

    @translate_errors
    async def GetPreferences(
        self, request: pb.GetPreferencesRequest, context: Any
    ) -> pb.GetPreferencesResponse:
        card_id = _scope(request.card_id)
        await self._wait_for(request.min_stream_sequence)
        async with self._db() as conn:
            own, endpoints = await queries.get_preferences(conn, self.schema, card_id)
            default = (
                None if not card_id else (await queries.get_preferences(conn, self.schema, ""))[0]
            )
        in_force = effective(own, default)
        prefs = own or ScopePrefs()
        message = pb.Preferences(
            card_id=card_id,
            kinds=[kind_to_pb(k) for k in prefs.kinds or ()],
            kinds_set=prefs.kinds is not None,
            webhooks=[
                pb.WebhookEndpoint(
                    endpoint_id=e.endpoint_id, url=e.url, secret_fingerprint=e.secret_fingerprint
                )
                for e in endpoints
            ],
        )
        if prefs.low_balance_threshold is not None:
            message.low_balance_threshold = prefs.low_balance_threshold
        if prefs.low_balance_percent is not None:
            message.low_balance_percent = prefs.low_balance_percent
        return pb.GetPreferencesResponse(
            preferences=message,
            effective_kinds=[kind_to_pb(k) for k in in_force.kinds],
            effective_low_balance_threshold=in_force.low_balance_threshold or 0,
            effective_low_balance_percent=in_force.low_balance_percent,
        )

    @translate_errors
    async def SetWebhookEndpoint(
        self, request: pb.SetWebhookEndpointRequest, context: Any
    ) -> pb.SetWebhookEndpointResponse:
        result, generated = await self.commands.set_webhook(
            request.command_id, request.card_id, request.endpoint_id, request.url, request.secret
        )
        return pb.SetWebhookEndpointResponse(result=_result(result), generated_secret=generated)

    @translate_errors
    async def RemoveWebhookEndpoint(
        self, request: pb.RemoveWebhookEndpointRequest, context: Any
    ) -> pb.RemoveWebhookEndpointResponse:
        result = await self.commands.remove_webhook(
            request.command_id, request.card_id, request.endpoint_id
        )
        return pb.RemoveWebhookEndpointResponse(result=_result(result))

    @translate_errors
    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: Any
    ) -> pb.ListDeliveriesResponse:
        card_id = _scope(request.card_id)
        size = _page_size(request.page_size)
        status = ""
        if request.status != pb.DELIVERY_STATUS_UNSPECIFIED:
            status = pb.DeliveryStatus.Name(request.status).removeprefix("DELIVERY_STATUS_").lower()
        if request.page_token and not request.page_token.isdigit():
            raise InvalidArgument("malformed page_token")
        after = int(request.page_token or 0)
        async with self._db() as conn:
            rows = await queries.list_deliveries(
                conn, self.schema, card_id=card_id, status=status, after_id=after, page_size=size
            )
        return pb.ListDeliveriesResponse(
            deliveries=[
                pb.Delivery(
                    delivery_id=r.delivery_id,
                    notification_id=r.notification_id,
                    card_id=r.card_id,
                    endpoint_id=r.endpoint_id,
                    status=pb.DeliveryStatus.Value("DELIVERY_STATUS_" + r.status.upper()),
                    attempts=r.attempts,
                    last_http_status=r.last_http_status,
                    last_error=r.last_error,
                    next_attempt_at=_timestamp(r.next_attempt_at),
                    delivered_at=_timestamp(r.delivered_at),
                )
                for r in rows
            ],
            next_page_token=str(rows[-1].delivery_id) if len(rows) == size else "",
        )


def add_to_server(servicer: NotificationServicer, server: grpc.aio.Server) -> None:
    """Register the servicer on a server (the runtime's ``GrpcService.add``)."""
    pb_grpc.add_NotificationServiceServicer_to_server(servicer, server)
