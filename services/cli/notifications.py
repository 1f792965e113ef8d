"""``jetledger notifications …`` and ``jetledger replay notifications``.

- ``replay notifications`` rebuilds the notification projection (notifications, alert state,
  preferences, webhook endpoints) from sequence 1 into a shadow schema and swaps it in. It never
  queues or re-sends a webhook: delivery state is operational and untouched.
- ``notifications verify`` compares the live rows with an independent in-memory fold of the streams.
- ``notifications list|watch|deliveries`` read through the service's gRPC API;
  ``notifications prefs|webhook`` change preferences (commands that append events).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import TYPE_CHECKING

import psycopg
from google.protobuf.json_format import MessageToDict, MessageToJson
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from contracts.errors import InvalidArgument
from contracts.money import format_minor
from jetledger.notification.v1 import notification_pb2 as pb
from projections.notifications.core import ALL_KINDS
from projections.notifications.rebuild import Progress as RebuildProgress
from projections.notifications.rebuild import rebuild, verify
from projections.notifications.schema import create_schemas
from services.cli.clients import call, connect, stream
from services.cli.ledger import progress_bar, run_command
from services.cli.parsing import replay_subparsers
from services.notification.grpc_api import kind_to_pb
from services.settings import Settings
from services.wiring import command_database_url, command_store

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(subparsers: Subparsers) -> None:
    """Add ``replay notifications`` and the ``notifications`` commands."""
    rebuild_cmd = replay_subparsers(subparsers).add_parser(
        "notifications", help="rebuild the notification projection (never re-sends a webhook)"
    )
    rebuild_cmd.set_defaults(handler=replay_notifications)
    area = subparsers.add_parser("notifications", help="list, watch and configure notifications")
    # `jetledger notifications [--watch] [--json]` (no action) lists, or with --watch follows.
    area.add_argument("--watch", action="store_true", help="follow new notifications live")
    area.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    area.add_argument("--card", default="", help="one card (default: every card)")
    area.set_defaults(
        handler=_list_or_watch,
        kind=[],
        limit=50,
        newest_first=False,
        cursor="",
        from_now=False,
    )
    sub = area.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("verify", help="compare live rows with an independent fold").set_defaults(
        handler=verify_notifications
    )
    listing = sub.add_parser("list", help="list notifications (keyset pages)")
    listing.add_argument("--card", default="", help="one card (default: every card)")
    listing.add_argument("--kind", action="append", default=[], choices=ALL_KINDS)
    listing.add_argument("--limit", type=int, default=50, help="how many to show")
    listing.add_argument("--newest-first", action="store_true")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    listing.set_defaults(handler=list_notifications)
    watch = sub.add_parser("watch", help="stream notifications as JSON lines")
    watch.add_argument("--card", default="")
    watch.add_argument("--kind", action="append", default=[], choices=ALL_KINDS)
    watch.add_argument("--cursor", default="", help="resume after this cursor")
    watch.add_argument("--from-now", action="store_true", help="only notifications from now on")
    watch.set_defaults(handler=watch_notifications)
    prefs = sub.add_parser("prefs", help="show or set a card's (or the default's) preferences")
    prefs.add_argument("--card", default="", help="empty: the operator default")
    prefs.add_argument("--set", action="store_true", help="replace the preferences")
    prefs.add_argument("--kinds", default=None, help="comma-separated kinds pushed to webhooks")
    prefs.add_argument("--threshold", type=int, default=None, help="low balance, minor units")
    prefs.add_argument("--percent", type=int, default=None, help="low balance, percent")
    prefs.add_argument("--command-id", default="", help="idempotency key (default: random)")
    prefs.set_defaults(handler=preferences)
    hook = sub.add_parser("webhook", help="add/replace (--url) or remove (--remove) an endpoint")
    hook.add_argument("--card", default="", help="empty: an operator endpoint (every card)")
    hook.add_argument("--endpoint", required=True)
    hook.add_argument("--url", default="")
    hook.add_argument("--secret", default="", help="empty: generate one (printed once)")
    hook.add_argument("--remove", action="store_true")
    hook.add_argument("--command-id", default="")
    hook.set_defaults(handler=webhook)
    deliveries = sub.add_parser("deliveries", help="webhook delivery state")
    deliveries.add_argument("--card", default="")
    deliveries.add_argument("--status", default="", choices=["", "pending", "delivered", "dead"])
    deliveries.set_defaults(handler=list_deliveries)


def replay_notifications(args: argparse.Namespace, settings: Settings) -> int:
    """Rebuild the notification projection from the streams and swap it in."""
    return run_command(settings, lambda: _rebuild(settings))


async def _rebuild(settings: Settings) -> int:
    console = Console(stderr=True)
    db = command_database_url(settings)
    async with (
        command_store(settings) as store,
        await psycopg.AsyncConnection.connect(db, autocommit=True) as conn,
    ):
        await create_schemas(conn, settings.notification_schema)
        with progress_bar(console, "replay") as update:

            def show(p: RebuildProgress) -> None:
                rate = p.applied / p.elapsed if p.elapsed > 0 else 0.0
                update(p.phase, p.applied, p.target, f"messages · {rate:,.0f}/s")

            report = await rebuild(conn, store, settings.notification_schema, show)
    applied = ", ".join(f"{name}: {n} messages" for name, n in report.messages.items())
    console.print(
        f"rebuilt {report.notifications} notifications ({applied}) in {report.seconds:.1f}s;"
        " swapped in"
    )
    return 0


def verify_notifications(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 1 and list the problems when the projection is behind or differs from its fold."""
    problems = run_command(settings, lambda: _verify(settings))
    for problem in problems:
        print(problem)
    print(f"{len(problems)} differences", file=sys.stderr)
    return 1 if problems else 0


async def _verify(settings: Settings) -> list[str]:
    db = command_database_url(settings)
    async with (
        command_store(settings) as store,
        await psycopg.AsyncConnection.connect(db, autocommit=True) as conn,
    ):
        return await verify(conn, store, settings.notification_schema)


def list_notifications(args: argparse.Namespace, settings: Settings) -> int:
    """Print notifications as a table, following pages up to ``--limit``."""
    token = ""
    rows: list[pb.Notification] = []
    with connect(settings) as clients:
        while len(rows) < args.limit:
            page = call(
                clients.notifications.ListNotifications,
                pb.ListNotificationsRequest(
                    card_id=args.card,
                    kinds=[kind_to_pb(k) for k in args.kind],
                    page_size=min(1000, args.limit - len(rows)),
                    page_token=token,
                    newest_first=args.newest_first,
                ),
            )
            rows += list(page.notifications)
            token = page.next_page_token
            if not token:
                break
    if getattr(args, "json", False):
        for n in rows:
            print(MessageToJson(n, indent=None, preserving_proto_field_name=True))
        return 0
    table = Table("when", "card", "kind", "message", "amount")
    for n in rows:
        amount = format_minor(n.amount, n.currency) if n.currency else ""
        kind = pb.NotificationKind.Name(n.kind).removeprefix("NOTIFICATION_KIND_").lower()
        table.add_row(n.occurred_at.ToJsonString(), n.card_id, kind, n.message, amount)
    Console().print(table)
    return 0


def _list_or_watch(args: argparse.Namespace, settings: Settings) -> int:
    """``notifications`` with no action: list, or follow with ``--watch``."""
    if args.watch:
        return watch_notifications(args, settings)
    return list_notifications(args, settings)


def watch_notifications(args: argparse.Namespace, settings: Settings) -> int:
    """Print notifications as JSON lines as they arrive (each carries its resume cursor)."""
    request = pb.WatchNotificationsRequest(
        card_id=args.card,
        kinds=[kind_to_pb(k) for k in args.kind],
        cursor=args.cursor,
        from_now=args.from_now,
    )
    with connect(settings) as clients:
        for reply in stream(clients.notifications.WatchNotifications, request):
            note = reply.notification
            print(json.dumps(MessageToDict(note, preserving_proto_field_name=True)), flush=True)
    return 0


def preferences(args: argparse.Namespace, settings: Settings) -> int:
    """Show a scope's preferences, or replace them with ``--set``."""
    if args.set:
        kinds = [] if args.kinds is None else [k for k in args.kinds.split(",") if k]
        unknown = [k for k in kinds if k not in ALL_KINDS]
        if unknown:
            raise InvalidArgument(f"unknown kinds {unknown}; known: {', '.join(ALL_KINDS)}")
        request = pb.SetPreferencesRequest(
            command_id=args.command_id or uuid.uuid4().hex,
            card_id=args.card,
            kinds=[kind_to_pb(k) for k in kinds],
            kinds_set=args.kinds is not None,
        )
        if args.threshold is not None:
            request.low_balance_threshold = args.threshold
        if args.percent is not None:
            request.low_balance_percent = args.percent
        with connect(settings) as clients:
            changed = call(clients.notifications.SetPreferences, request)
        print(json.dumps(MessageToDict(changed, preserving_proto_field_name=True)))
        return 0
    with connect(settings) as clients:
        reply = call(
            clients.notifications.GetPreferences, pb.GetPreferencesRequest(card_id=args.card)
        )
    print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
    return 0


def webhook(args: argparse.Namespace, settings: Settings) -> int:
    """Add, replace or remove a webhook endpoint."""
    command_id = args.command_id or uuid.uuid4().hex
    reply: Message
    with connect(settings) as clients:
        if args.remove:
            reply = call(
                clients.notifications.RemoveWebhookEndpoint,
                pb.RemoveWebhookEndpointRequest(
                    command_id=command_id, card_id=args.card, endpoint_id=args.endpoint
                ),
            )
        else:
            reply = call(
                clients.notifications.SetWebhookEndpoint,
                pb.SetWebhookEndpointRequest(
                    command_id=command_id,
                    card_id=args.card,
                    endpoint_id=args.endpoint,
                    url=args.url,
                    secret=args.secret,
                ),
            )
    print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True)))
    return 0


def list_deliveries(args: argparse.Namespace, settings: Settings) -> int:
    """Print webhook deliveries and their state (dead letters included)."""
    status = pb.DeliveryStatus.Value(f"DELIVERY_STATUS_{args.status.upper() or 'UNSPECIFIED'}")
    with connect(settings) as clients:
        reply = call(
            clients.notifications.ListDeliveries,
            pb.ListDeliveriesRequest(card_id=args.card, status=status, page_size=1000),
        )
    table = Table("id", "notification", "endpoint", "status", "attempts", "last")
    for d in reply.deliveries:
        state = pb.DeliveryStatus.Name(d.status).removeprefix("DELIVERY_STATUS_").lower()
        last = d.last_error or (str(d.last_http_status) if d.last_http_status else "")
        table.add_row(
            str(d.delivery_id), d.notification_id, d.endpoint_id, state, str(d.attempts), last
        )
    Console().print(table)
    return 0
