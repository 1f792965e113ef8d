"""``jetledger tx create|authorize|capture|void|refund|fund|adjust|outcome``: money commands.

Amounts are written like ``12.50`` and converted exactly to minor units of ``--currency``. Every
command carries its transaction id (``--id``, random by default): the idempotency key, forever. A
decline is recorded and reported as an error line with exit status 5 (FAILED_PRECONDITION).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table

from contracts.errors import Declined
from jetledger.transaction.v1 import transaction_pb2 as pb
from services.cli.clients import call, connect
from services.cli.output import console, money, new_id, parse_amount, position, print_json
from services.outcomes import recorded_outcome
from services.settings import Settings

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(subparsers: Subparsers) -> None:
    """Add ``tx`` and its actions."""
    area = subparsers.add_parser("tx", help="purchases, holds, captures, refunds, top-ups")
    actions = area.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = _action(actions, "create", "a one-step purchase at a merchant", create_tx)
    create.add_argument("--merchant", required=True)
    create.add_argument("--description", default="")

    authorize = _action(actions, "authorize", "place a hold (reduces available)", authorize_tx)
    authorize.add_argument("--merchant", required=True)
    authorize.add_argument("--description", default="")
    authorize.add_argument(
        "--expires-in", type=int, default=0, metavar="SECONDS", help="default: the server's TTL"
    )

    _action(actions, "capture", "capture all or part of a hold", capture_tx, parent="AUTH_ID")
    _action(actions, "void", "release the rest of a hold", void_tx, parent="AUTH_ID", amount=False)
    _action(actions, "refund", "refund a purchase or capture", refund_tx, parent="ORIGINAL_ID")
    _action(actions, "fund", "top up (or repay) a card", fund_tx)
    adjust = _action(actions, "adjust", "operator correction (signed amount)", adjust_tx)
    adjust.add_argument("--reason", required=True)
    adjust.add_argument("--actor", required=True, help="who made the correction")

    outcome = actions.add_parser("outcome", help="the recorded outcome of any command")
    outcome.add_argument("transaction_id", metavar="TX_ID")
    outcome.add_argument("--json", action="store_true", help="print the reply as JSON")
    outcome.set_defaults(handler=show_outcome)


def _action(
    actions: Subparsers,
    name: str,
    text: str,
    handler: Any,
    *,
    parent: str = "",
    amount: bool = True,
) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=text)
    parser.add_argument("card_id", metavar="CARD")
    if parent:
        parser.add_argument("parent_id", metavar=parent)
    if amount:
        parser.add_argument("amount", metavar="AMOUNT", help="e.g. 12.50")
        parser.add_argument("--currency", default="USD", help="ISO-4217 code (default USD)")
    parser.add_argument("--id", dest="transaction_id", default="", help="idempotency key")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    parser.set_defaults(handler=handler)
    return parser


def _money(args: argparse.Namespace, *, signed: bool = False) -> pb.Money:
    return pb.Money(
        amount=parse_amount(args.amount, args.currency, signed=signed), currency=args.currency
    )


def _tx_id(args: argparse.Namespace) -> str:
    return str(args.transaction_id or new_id("tx"))


def create_tx(args: argparse.Namespace, settings: Settings) -> int:
    """Purchase."""
    request = pb.CreateTransactionRequest(
        transaction_id=_tx_id(args),
        card_id=args.card_id,
        merchant_id=args.merchant,
        amount=_money(args),
        description=args.description,
    )
    return _submit(settings, "CreateTransaction", request, args.json)


def authorize_tx(args: argparse.Namespace, settings: Settings) -> int:
    """Hold."""
    request = pb.AuthorizeTransactionRequest(
        transaction_id=_tx_id(args),
        card_id=args.card_id,
        merchant_id=args.merchant,
        amount=_money(args),
        description=args.description,
    )
    if args.expires_in:
        expires = Timestamp()
        expires.FromDatetime(datetime.now(UTC) + timedelta(seconds=args.expires_in))
        request.expires_at.CopyFrom(expires)
    return _submit(settings, "AuthorizeTransaction", request, args.json)


def capture_tx(args: argparse.Namespace, settings: Settings) -> int:
    """Capture."""
    request = pb.CaptureTransactionRequest(
        transaction_id=_tx_id(args),
        card_id=args.card_id,
        authorization_id=args.parent_id,
        amount=_money(args),
    )
    return _submit(settings, "CaptureTransaction", request, args.json)


def void_tx(args: argparse.Namespace, settings: Settings) -> int:
    """Void."""
    request = pb.VoidTransactionRequest(
        transaction_id=_tx_id(args), card_id=args.card_id, authorization_id=args.parent_id
    )
    return _submit(settings, "VoidTransaction", request, args.json)


def refund_tx(args: argparse.Namespace, settings: Settings) -> int:
    """Refund."""
    request = pb.RefundTransactionRequest(
        transaction_id=_tx_id(args),
        card_id=args.card_id,
        original_transaction_id=args.parent_id,
        amount=_money(args),
    )
    return _submit(settings, "RefundTransaction", request, args.json)


def fund_tx(args: argparse.Namespace, settings: Settings) -> int:
    """Top up."""
    request = pb.FundCardRequest(
        transaction_id=_tx_id(args), card_id=args.card_id, amount=_money(args)
    )
    return _submit(settings, "FundCard", request, args.json)


def adjust_tx(args: argparse.Namespace, settings: Settings) -> int:
    """Correct."""
    request = pb.AdjustBalanceRequest(
        transaction_id=_tx_id(args),
        card_id=args.card_id,
        amount=_money(args, signed=True),
        reason=args.reason,
        actor=args.actor,
    )
    return _submit(settings, "AdjustBalance", request, args.json)


def _submit(settings: Settings, method: str, request: Any, as_json: bool) -> int:
    with connect(settings) as clients:
        try:
            reply = call(getattr(clients.transactions, method), request)
        except Declined as declined:
            recorded = recorded_outcome(declined)
            if as_json and recorded is not None:
                print_json(
                    recorded
                )  # the recorded decline for scripts; the line and status 5 follow
            raise
    if as_json:
        print_json(reply.outcome)
    else:
        amount = getattr(request, "amount", None)
        console().print(summary(reply.outcome, amount))
    return 0


def summary(outcome: pb.CommandOutcome, amount: pb.Money | None = None) -> str:
    """One line for people: what was decided, where it is recorded, whether it was a retry."""
    what = outcome.command_type.replace("_", " ")
    sum_ = f" {money(amount.amount, amount.currency)}" if amount and amount.currency else ""
    mark = "[green]accepted[/]" if outcome.outcome == pb.OUTCOME_ACCEPTED else "[red]declined[/]"
    again = " [yellow](replayed: the original outcome)[/]" if outcome.replayed else ""
    why = f" — {outcome.reason}: {outcome.detail}" if outcome.reason else ""
    return (
        f"{mark} {what}{sum_} on card {outcome.card_id} — id {outcome.transaction_id},"
        f" {position(outcome.stream, outcome.stream_sequence)}{why}{again}"
    )


def show_outcome(args: argparse.Namespace, settings: Settings) -> int:
    """Print the recorded outcome of a command."""
    with connect(settings) as clients:
        reply = call(
            clients.transactions.GetCommandOutcome,
            pb.GetCommandOutcomeRequest(transaction_id=args.transaction_id),
        )
    o = reply.outcome
    if args.json:
        print_json(o)
        return 0
    table = Table("field", "value", show_header=False)
    table.add_row("transaction", o.transaction_id)
    table.add_row("command", o.command_type)
    table.add_row("card", o.card_id)
    table.add_row("outcome", pb.Outcome.Name(o.outcome).removeprefix("OUTCOME_").lower())
    if o.reason:
        table.add_row("reason", f"{o.reason}: {o.detail}")
    table.add_row("recorded at", position(o.stream, o.stream_sequence))
    table.add_row("decided at", o.decided_at.ToJsonString())
    console().print(table)
    return 0
