"""The demo's scripted day on two cards, driven through the services' gRPC APIs only.

``run_scenario`` issues two cards, tops one up, buys at merchants, holds → partially captures →
voids, refunds, is declined twice (insufficient funds, frozen card), retries a purchase with the
same id (the original outcome comes back) and then reads the balances from the ledger with
read-your-writes, and the notifications from the notification service. It returns what it saw, so
``tests/e2e/test_demo_scenario.py`` can check the numbers that ``make demo`` prints.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from contracts.accounts import FUNDING, card_account, merchant_account
from contracts.errors import Declined
from jetledger.card.v1 import card_pb2
from jetledger.ledger.v1 import ledger_pb2
from jetledger.notification.v1 import notification_pb2
from jetledger.transaction.v1 import transaction_pb2 as tx
from services.cli.clients import Clients, call
from services.cli.output import money
from services.outcomes import recorded_outcome

CURRENCY: Final = "USD"
SETTLE_SECONDS: Final = 15.0  # derived "posted" notices trail the source stream a little


@dataclass(frozen=True, slots=True)
class Step:
    """One thing that happened in the story."""

    text: str
    outcome: str  # "accepted", "declined" or "replayed"
    detail: str
    position: int  # stream sequence of the command's outcome marker


@dataclass(frozen=True, slots=True)
class AccountBalance:
    """One account's balance as the ledger service reports it (minor units)."""

    account_id: str
    currency: str
    posted: int
    pending: int
    available: int
    entries: int


@dataclass
class ScenarioResult:
    """What the scenario saw: its steps, the final balances and the notifications per kind."""

    stream: str
    steps: list[Step] = field(default_factory=list)
    balances: dict[str, AccountBalance] = field(default_factory=dict)
    notifications: dict[str, int] = field(default_factory=dict)
    latest_message: dict[str, str] = field(default_factory=dict)  # kind -> its latest sentence
    position: int = 0  # the last stream position the scenario wrote

    def step(self, text: str) -> Step:
        """The step whose text starts with ``text``."""
        return next(s for s in self.steps if s.text.startswith(text))


def _m(amount: int) -> tx.Money:
    return tx.Money(amount=amount, currency=CURRENCY)


class _Story:
    def __init__(self, clients: Clients, suffix: str, on_step: Callable[[Step], None]) -> None:
        self.c = clients
        self.suffix = suffix
        self.on_step = on_step
        self.result = ScenarioResult(stream=clients.stream)

    def id(self, name: str) -> str:
        return f"{name}{self.suffix}"

    def record(self, text: str, outcome: str, detail: str, position: int) -> None:
        step = Step(text, outcome, detail, position)
        self.result.steps.append(step)
        self.result.position = max(self.result.position, position)
        self.on_step(step)

    def card(self, text: str, method: Any, request: Any) -> None:
        reply = call(method, request)
        card = reply.card
        self.record(
            text,
            "replayed" if reply.result.replayed else "accepted",
            f"available {money(card.available, card.currency)}",
            reply.result.stream_sequence,
        )

    def money_command(self, text: str, method: Any, request: Any) -> None:
        try:
            outcome = call(method, request).outcome
        except Declined as declined:
            # A decline is a recorded outcome, and the error carries it (services.outcomes): its
            # position, and whether this answer replays an earlier decision.
            recorded = (
                recorded_outcome(declined)
                or call(
                    self.c.transactions.GetCommandOutcome,
                    tx.GetCommandOutcomeRequest(transaction_id=request.transaction_id),
                ).outcome
            )
            again = recorded.replayed
            self.record(
                text,
                "replayed" if again else "declined",
                f"{'the original decline, ' if again else ''}{recorded.reason}: {recorded.detail}",
                recorded.stream_sequence,
            )
            return
        detail = "the original outcome, nothing appended" if outcome.replayed else "posted"
        self.record(
            text,
            "replayed" if outcome.replayed else "accepted",
            detail,
            outcome.stream_sequence,
        )


def run_scenario(
    clients: Clients, *, suffix: str = "", on_step: Callable[[Step], None] | None = None
) -> ScenarioResult:
    """Play the story against running services and return what it saw."""
    s = _Story(clients, suffix, on_step or (lambda step: None))
    cards, txs = clients.cards, clients.transactions
    alice, bob = s.id("alice"), s.id("bob")
    coffee, books, hotel = s.id("blue-bottle"), s.id("bookshop"), s.id("lakeside-hotel")

    s.card(
        "Alice gets a debit card ending 4242",
        cards.IssueCard,
        card_pb2.IssueCardRequest(
            command_id=s.id("issue-alice"), card_id=alice, cardholder_name="Alice Example",
            card_type=card_pb2.CARD_TYPE_DEBIT, currency=CURRENCY, last4="4242",
        ),
    )  # fmt: skip
    s.card(
        "Bob gets a credit card ending 1881, limit 500.00 USD",
        cards.IssueCard,
        card_pb2.IssueCardRequest(
            command_id=s.id("issue-bob"), card_id=bob, cardholder_name="Bob Example",
            card_type=card_pb2.CARD_TYPE_CREDIT, currency=CURRENCY, credit_limit=500_00,
            last4="1881",
        ),
    )  # fmt: skip
    s.money_command(
        "Alice tops up 200.00 USD",
        txs.FundCard,
        tx.FundCardRequest(transaction_id=s.id("topup-1"), card_id=alice, amount=_m(200_00)),
    )
    coffee_request = tx.CreateTransactionRequest(
        transaction_id=s.id("coffee-1"), card_id=alice, merchant_id=coffee, amount=_m(4_50),
        description="flat white",
    )  # fmt: skip
    s.money_command("Alice buys a coffee: 4.50 USD", txs.CreateTransaction, coffee_request)
    s.money_command(
        "Bob buys books: 89.99 USD",
        txs.CreateTransaction,
        tx.CreateTransactionRequest(
            transaction_id=s.id("books-1"), card_id=bob, merchant_id=books, amount=_m(89_99)
        ),
    )
    s.money_command(
        "The hotel holds 120.00 USD on Alice's card",
        txs.AuthorizeTransaction,
        tx.AuthorizeTransactionRequest(
            transaction_id=s.id("hotel-hold"), card_id=alice, merchant_id=hotel, amount=_m(120_00)
        ),
    )
    s.money_command(
        "At checkout the hotel captures 95.00 USD of the hold",
        txs.CaptureTransaction,
        tx.CaptureTransactionRequest(
            transaction_id=s.id("hotel-capture"), card_id=alice,
            authorization_id=s.id("hotel-hold"), amount=_m(95_00),
        ),
    )  # fmt: skip
    s.money_command(
        "… and voids the remaining 25.00 USD",
        txs.VoidTransaction,
        tx.VoidTransactionRequest(
            transaction_id=s.id("hotel-void"), card_id=alice, authorization_id=s.id("hotel-hold")
        ),
    )
    s.money_command(
        "The bookshop refunds Bob 20.00 USD",
        txs.RefundTransaction,
        tx.RefundTransactionRequest(
            transaction_id=s.id("books-refund"), card_id=bob,
            original_transaction_id=s.id("books-1"), amount=_m(20_00),
        ),
    )  # fmt: skip
    tv_request = tx.CreateTransactionRequest(
        transaction_id=s.id("tv-1"), card_id=alice, merchant_id=s.id("electronics"),
        amount=_m(300_00), description="a television",
    )  # fmt: skip
    s.money_command("Alice tries to buy a 300.00 USD TV", txs.CreateTransaction, tv_request)
    s.card(
        "Bob loses his wallet and freezes his card",
        cards.FreezeCard,
        card_pb2.FreezeCardRequest(command_id=s.id("freeze-bob"), card_id=bob, reason="lost"),
    )
    s.money_command(
        "Someone tries 15.00 USD at a cinema on Bob's frozen card",
        txs.CreateTransaction,
        tx.CreateTransactionRequest(
            transaction_id=s.id("cinema-1"), card_id=bob, merchant_id=s.id("cinema"),
            amount=_m(15_00),
        ),
    )  # fmt: skip
    s.card(
        "Bob finds his wallet and unfreezes the card",
        cards.UnfreezeCard,
        card_pb2.UnfreezeCardRequest(command_id=s.id("unfreeze-bob"), card_id=bob),
    )
    s.money_command(
        "The coffee shop's terminal retries Alice's purchase (same id)",
        txs.CreateTransaction,
        coffee_request,
    )
    s.money_command(
        "Alice retries the TV (same id): the same decline", txs.CreateTransaction, tv_request
    )

    accounts = [
        card_account(alice), card_account(bob), merchant_account(coffee),
        merchant_account(books), merchant_account(hotel), FUNDING,
    ]  # fmt: skip
    ledger_position = _read_balances(s.result, clients, accounts)
    _read_notifications(s.result, clients, [alice, bob], ledger_position)
    return s.result


def _read_balances(result: ScenarioResult, clients: Clients, accounts: list[str]) -> int:
    """Fill ``result.balances``, waiting until the ledger has projected every command."""
    at_least = ledger_pb2.StreamPosition(stream=result.stream, sequence=result.position)
    reached = 0
    for account in accounts:
        reply = call(
            clients.ledger.GetBalance,
            ledger_pb2.GetBalanceRequest(account_id=account, min_position=at_least),
        )
        reached = max(reached, reply.position.sequence)
        for b in reply.balances:
            result.balances[account] = AccountBalance(
                account, b.currency, int(b.posted), int(b.pending), int(b.available), b.entry_count
            )
    return reached


def _read_notifications(
    result: ScenarioResult, clients: Clients, card_ids: list[str], ledger_position: int
) -> None:
    """Fill ``result.notifications``: every notification of the scenario's cards, by kind."""
    # One "posted" notice per entry on a card account; they come from the derived stream, which
    # the read-your-writes wait (a source-stream position) does not cover: wait for them too.
    posted_expected = sum(result.balances[card_account(c)].entries for c in card_ids)
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        kinds: Counter[str] = Counter()
        latest: dict[str, str] = {}
        for card_id in card_ids:
            reply = call(
                clients.notifications.ListNotifications,
                notification_pb2.ListNotificationsRequest(
                    card_id=card_id, page_size=1000, min_stream_sequence=ledger_position
                ),
            )
            for note in reply.notifications:
                kind = notification_pb2.NotificationKind.Name(note.kind)
                kind = kind.removeprefix("NOTIFICATION_KIND_").lower()
                kinds[kind] += 1
                latest[kind] = note.message
        if kinds["posted"] >= posted_expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    result.notifications = dict(kinds)
    result.latest_message = latest


# What the story must end with (minor units): checked by ``make demo`` and the test suite.
EXPECTED_POSTED: Final = {
    "card-alice": 200_00 - 4_50 - 95_00,
    "card-bob": -89_99 + 20_00,
    "merchant-blue-bottle": 4_50,
    "merchant-bookshop": 89_99 - 20_00,
    "merchant-lakeside-hotel": 95_00,
    "house-funding": -200_00,
}
EXPECTED_OUTCOMES: Final = [
    "accepted", "accepted", "accepted", "accepted", "accepted", "accepted", "accepted",
    "accepted", "accepted", "declined", "accepted", "declined", "accepted", "replayed", "replayed",
]  # fmt: skip


def check(result: ScenarioResult, suffix: str = "") -> list[str]:
    """Return what differs from the story's promises (empty when everything holds)."""
    problems = []
    outcomes = [step.outcome for step in result.steps]
    if outcomes != EXPECTED_OUTCOMES:
        problems.append(f"outcomes {outcomes}, expected {EXPECTED_OUTCOMES}")
    for account, posted in EXPECTED_POSTED.items():
        kind, _, name = account.partition("-")
        found = result.balances.get(f"{kind}-{name}{suffix}" if kind != "house" else account)
        if found is None or found.posted != posted or found.pending != 0:
            problems.append(f"{account}: {found}, expected posted {posted} and nothing pending")
    for retry, original in (
        ("The coffee shop", "Alice buys a coffee"),
        ("Alice retries", "Alice tries"),
    ):
        if result.step(retry).position != result.step(original).position:
            problems.append(f"{retry!r} did not return the original outcome")
    if sum(b.posted for b in result.balances.values()) != 0:
        problems.append("balances do not sum to zero")
    return problems
