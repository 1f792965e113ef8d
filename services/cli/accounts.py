"""``jetledger balance`` and ``jetledger entries``: the ledger service's read side.

``ACCOUNT`` is ``card-<id>``, ``merchant-<id>`` or ``house-<id>``; a bare id means a card (so a
card whose own id starts with ``card-`` must be written in full: ``card-card-7``). With
``--at-least-seq N`` (the position a command printed) the answer waits, bounded, until the ledger
projection has caught up with it: read-your-writes.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table

from contracts.accounts import card_account
from contracts.errors import InvalidArgument
from jetledger.ledger.v1 import ledger_pb2 as pb
from services.cli.clients import call, connect
from services.cli.output import console, money, position, print_json
from services.settings import Settings

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

_KINDS = ("card-", "merchant-", "house-")


def register(subparsers: Subparsers) -> None:
    """Add ``balance`` and ``entries`` unless another area (the ledger's) already has."""
    if "balance" not in subparsers.choices:
        balance = subparsers.add_parser("balance", help="posted, pending and available balance")
        balance.add_argument(
            "account",
            metavar="ACCOUNT",
            help="card-<id>, merchant-<id>, house-funding, house-adjustments",
        )
        balance.add_argument("--as-of", default="", metavar="TIME", help="ISO-8601 time")
        _read_options(balance)
        balance.set_defaults(handler=show_balance)
    if "entries" not in subparsers.choices:
        entries = subparsers.add_parser("entries", help="an account's journal entries")
        entries.add_argument(
            "account",
            metavar="ACCOUNT",
            help="card-<id>, merchant-<id>, house-funding, house-adjustments",
        )
        entries.add_argument("--limit", type=int, default=100, help="at most this many")
        _read_options(entries)
        entries.set_defaults(handler=show_entries)


def _read_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--at-least-seq", type=int, default=0, metavar="N", help="wait until projected up to N"
    )
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")


def account_id(text: str) -> str:
    """``alice`` → ``card-alice``; an id that names its kind is kept as it is."""
    return text if text.startswith(_KINDS) else card_account(text)


def parse_time(text: str) -> Timestamp:
    """Read an ISO-8601 time (UTC when no offset is given) as a protobuf ``Timestamp``."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            f"--as-of must be an ISO-8601 time such as 2026-01-31T12:00:00Z, got {text!r:.40}"
        ) from None
    stamp = Timestamp()
    stamp.FromDatetime(when if when.tzinfo else when.replace(tzinfo=UTC))
    return stamp


def _min_position(settings: Settings, sequence: int) -> pb.StreamPosition | None:
    if sequence < 0:
        raise InvalidArgument("--at-least-seq must not be negative")
    return pb.StreamPosition(stream=settings.stream, sequence=sequence) if sequence else None


def show_balance(args: argparse.Namespace, settings: Settings) -> int:
    """Print an account's balances."""
    request = pb.GetBalanceRequest(
        account_id=account_id(args.account),
        min_position=_min_position(settings, args.at_least_seq),
    )
    if args.as_of:
        request.as_of.CopyFrom(parse_time(args.as_of))
    with connect(settings) as clients:
        reply = call(clients.ledger.GetBalance, request)
    if args.json:
        print_json(reply)
        return 0
    table = Table("currency", "posted", "pending", "available", "credit limit", "entries",
                  title=f"{reply.account_id}")  # fmt: skip
    for b in reply.balances:
        table.add_row(
            b.currency,
            money(int(b.posted), b.currency),
            money(int(b.pending), b.currency),
            money(int(b.available), b.currency),
            money(int(b.credit_limit), b.currency) if int(b.credit_limit or 0) else "—",
            str(b.entry_count),
        )
    out = console()
    if reply.balances:
        out.print(table)
    else:
        out.print(f"{reply.account_id}: no activity yet (balance 0)")
    out.print(f"[dim]as projected up to {position(reply.position.stream, reply.position.sequence)}")
    return 0


def show_entries(args: argparse.Namespace, settings: Settings) -> int:
    """Print an account's journal entries, oldest first."""
    if args.limit < 1:
        raise InvalidArgument("--limit must be at least 1")
    found: list[pb.Entry] = []
    token = ""
    with connect(settings) as clients:
        while len(found) < args.limit:
            reply = call(
                clients.ledger.ListEntries,
                pb.ListEntriesRequest(
                    account_id=account_id(args.account),
                    page_size=min(1000, args.limit - len(found)),
                    page_token=token,
                    min_position=_min_position(settings, args.at_least_seq),
                ),
            )
            found.extend(reply.entries)
            token = reply.next_page_token
            if not token:
                break
    if args.json:
        print_json(pb.ListEntriesResponse(entries=found, next_page_token=token))
        return 0
    table = Table("effective", "transaction", "event", "amount", "balance after", "entry")
    for e in found:
        table.add_row(
            e.effective_time.ToJsonString()[:19].replace("T", " "),
            e.transaction_id,
            e.event_type,
            money(e.amount.amount, e.amount.currency),
            money(int(e.balance_after), e.amount.currency),
            e.entry_id,
        )
    console().print(table)
    if token:
        console().print(f"[dim]more entries follow; raise --limit (now {args.limit})")
    return 0
