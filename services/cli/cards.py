"""``jetledger card issue|get|freeze|unfreeze|limit|close|list``: the card service from a terminal.

Cards are known by id and the last four digits of their number: no full PAN or CVV exists anywhere
to print. Every lifecycle command carries an idempotency key (``--id``, random by default), so a
retried command returns its original outcome.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Final

from rich.table import Table

from jetledger.card.v1 import card_pb2
from services.cli.clients import call, connect
from services.cli.output import (
    as_dict,
    console,
    money,
    new_id,
    parse_amount,
    position,
    print_json,
)
from services.settings import Settings

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

CARD_TYPES: Final = {
    "debit": card_pb2.CARD_TYPE_DEBIT,
    "credit": card_pb2.CARD_TYPE_CREDIT,
    "prepaid": card_pb2.CARD_TYPE_PREPAID,
}


def register(subparsers: Subparsers) -> None:
    """Add ``card`` and its actions."""
    area = subparsers.add_parser("card", help="issue, look up, freeze and list cards")
    actions = area.add_subparsers(dest="action", metavar="ACTION", required=True)

    issue = actions.add_parser("issue", help="issue a card (and open its ledger account)")
    issue.add_argument("card_id", metavar="CARD")
    issue.add_argument("--name", required=True, help="cardholder name")
    issue.add_argument("--type", choices=sorted(CARD_TYPES), default="debit")
    issue.add_argument("--currency", default="USD", help="ISO-4217 code (default USD)")
    issue.add_argument("--limit", default="0", help="credit limit, e.g. 500.00 (credit cards)")
    issue.add_argument("--last4", required=True, help="last four digits of the card number")
    _common(issue, write=True)
    issue.set_defaults(handler=issue_card)

    get = actions.add_parser("get", help="show one card (GetCard)")
    get.add_argument("card_id", metavar="CARD")
    _common(get)
    get.set_defaults(handler=get_card)

    for name, handler, text in (
        ("freeze", freeze_card, "stop new spending on a card"),
        ("unfreeze", unfreeze_card, "allow spending again"),
        ("close", close_card, "close a card (its balance must be zero)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("card_id", metavar="CARD")
        if name == "freeze":
            action.add_argument("--reason", default="", help="why (kept in the event)")
        _common(action, write=True)
        action.set_defaults(handler=handler)

    limit = actions.add_parser("limit", help="change a credit card's limit")
    limit.add_argument("card_id", metavar="CARD")
    limit.add_argument("amount", metavar="LIMIT", help="new limit, e.g. 750.00")
    limit.add_argument("--currency", default="USD", help="the card's currency (default USD)")
    _common(limit, write=True)
    limit.set_defaults(handler=change_limit)

    listing = actions.add_parser("list", help="list every card")
    listing.add_argument("--page-size", type=int, default=100, help="cards per request")
    _common(listing)
    listing.set_defaults(handler=list_cards)


def _common(parser: argparse.ArgumentParser, *, write: bool = False) -> None:
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    if write:
        parser.add_argument("--id", dest="command_id", default="", help="idempotency key")


def issue_card(args: argparse.Namespace, settings: Settings) -> int:
    """Issue a card."""
    limit = 0 if args.limit in ("0", "") else parse_amount(args.limit, args.currency)
    request = card_pb2.IssueCardRequest(
        command_id=args.command_id or new_id("issue"),
        card_id=args.card_id,
        cardholder_name=args.name,
        card_type=CARD_TYPES[args.type],
        currency=args.currency,
        credit_limit=limit,
        last4=args.last4,
    )
    with connect(settings) as clients:
        reply = call(clients.cards.IssueCard, request)
    return _show_change("issued", reply.result, reply.card, args.json)


def get_card(args: argparse.Namespace, settings: Settings) -> int:
    """Show one card."""
    with connect(settings) as clients:
        card = call(clients.cards.GetCard, card_pb2.CardRequest(card_id=args.card_id))
    if args.json:
        print_json(card)
    else:
        console().print(card_table([card]))
    return 0


def freeze_card(args: argparse.Namespace, settings: Settings) -> int:
    """Freeze a card."""
    request = card_pb2.FreezeCardRequest(
        command_id=args.command_id or new_id("freeze"), card_id=args.card_id, reason=args.reason
    )
    with connect(settings) as clients:
        reply = call(clients.cards.FreezeCard, request)
    return _show_change("froze", reply.result, reply.card, args.json)


def unfreeze_card(args: argparse.Namespace, settings: Settings) -> int:
    """Unfreeze a card."""
    request = card_pb2.UnfreezeCardRequest(
        command_id=args.command_id or new_id("unfreeze"), card_id=args.card_id
    )
    with connect(settings) as clients:
        reply = call(clients.cards.UnfreezeCard, request)
    return _show_change("unfroze", reply.result, reply.card, args.json)


def close_card(args: argparse.Namespace, settings: Settings) -> int:
    """Close a card."""
    request = card_pb2.CloseCardRequest(
        command_id=args.command_id or new_id("close"), card_id=args.card_id
    )
    with connect(settings) as clients:
        reply = call(clients.cards.CloseCard, request)
    return _show_change("closed", reply.result, reply.card, args.json)


def change_limit(args: argparse.Namespace, settings: Settings) -> int:
    """Change a credit card's limit."""
    request = card_pb2.UpdateCreditLimitRequest(
        command_id=args.command_id or new_id("limit"),
        card_id=args.card_id,
        credit_limit=parse_amount(args.amount, args.currency),
    )
    with connect(settings) as clients:
        reply = call(clients.cards.UpdateCreditLimit, request)
    return _show_change("changed the limit of", reply.result, reply.card, args.json)


def list_cards(args: argparse.Namespace, settings: Settings) -> int:
    """List every card, page by page."""
    cards: list[card_pb2.CardResponse] = []
    token = ""
    with connect(settings) as clients:
        while True:
            page = call(
                clients.cards.ListCards,
                card_pb2.ListCardsRequest(page_size=args.page_size, page_token=token),
            )
            cards.extend(page.cards)
            token = page.next_page_token
            if not token:
                break
    if args.json:
        print_json([as_dict(c) for c in cards])
    else:
        console().print(card_table(cards))
    return 0


def _show_change(
    verb: str, result: card_pb2.CommandResult, card: card_pb2.CardResponse, as_json: bool
) -> int:
    if as_json:
        print_json({"result": as_dict(result), "card": as_dict(card)})
        return 0
    again = " [yellow](replayed: the original outcome)[/]" if result.replayed else ""
    console().print(
        f"{verb} card [bold]{card.card_id}[/] — {position(result.stream, result.stream_sequence)}"
        f" (command {result.command_id}){again}"
    )
    console().print(card_table([card]))
    return 0


def card_table(cards: list[card_pb2.CardResponse]) -> Table:
    """Cards as a table (last four digits only, amounts exact)."""
    if len(cards) == 1:
        return _card_detail(cards[0])
    table = Table("card", "holder", "type", "status", "number", "available")
    for c in cards:
        table.add_row(
            c.card_id, c.cardholder_name, _type(c), _status(c), f"••{c.last4}", _available(c)
        )
    return table


def _card_detail(c: card_pb2.CardResponse) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="dim")
    table.add_column()
    rows = [
        ("card", f"[bold]{c.card_id}[/]  {_type(c)}, {_status(c)}, number ••{c.last4}"),
        ("holder", c.cardholder_name),
        ("account", c.account_id),
        (
            "balance",
            f"posted {money(c.posted, c.currency)} · pending {money(c.pending, c.currency)}",
        ),
        ("available", _available(c)),
        ("as of", position(c.stream, c.version)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def _type(c: card_pb2.CardResponse) -> str:
    return card_pb2.CardType.Name(c.card_type).removeprefix("CARD_TYPE_").lower()


def _status(c: card_pb2.CardResponse) -> str:
    return card_pb2.CardStatus.Name(c.status).removeprefix("CARD_STATUS_").lower()


def _available(c: card_pb2.CardResponse) -> str:
    limit = f" (limit {money(c.credit_limit, c.currency)})" if c.credit_limit else ""
    return money(c.available, c.currency) + limit
