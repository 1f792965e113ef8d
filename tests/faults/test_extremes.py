"""Balances at the extremes through the real services: no sequence of valid commands can stop a
projection or make a read fail (issue 10, defect 2).

Before the card balance limit, repeated maximum FundCard commands (each accepted) pushed a card
past 2^63−1: the ledger projector stopped on a bigint overflow and GetCard/ListCards answered
UNKNOWN "Value out of range". Now a card's posted balance stops at ``MAX_CARD_BALANCE`` (a decline
``balance_limit_exceeded``), and house and merchant accounts, which sum many cards, are exact
numerics: both are driven to the edge here, through gRPC, with every read checked afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.accounts import FUNDING, card_account, merchant_account
from contracts.money import MAX_AMOUNT, MAX_CARD_BALANCE
from jetledger.card.v1 import card_pb2
from jetledger.ledger.v1 import ledger_pb2
from jetledger.transaction.v1 import transaction_pb2 as tx
from services.dev.ports import with_free_ports
from services.dev.system import DevSystem
from services.settings import Settings
from tests.faults.services import Clients, new_id, usd

pytestmark = [pytest.mark.timeout(900), pytest.mark.faults]

INT64_MAX = 2**63 - 1
DECIDED = {tx.OUTCOME_ACCEPTED, tx.OUTCOME_DECLINED}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSystem]:
    token = uuid.uuid4().hex[:8]
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("extremes") / "data",
        stream=f"EX{token}",
        derived_stream=f"EX{token}_DERIVED",
        subject_prefix=f"ex{token}.",
    )
    with DevSystem(with_free_ports(settings), fresh=True) as running:
        yield running


@pytest.fixture(scope="module")
def clients(system: DevSystem) -> Iterator[Clients]:
    opened = Clients(system.settings)
    yield opened
    opened.close()


def submit(clients: Clients, commands: list[tx.TransactionCommand]) -> list[tx.CommandOutcome]:
    """Submit in chunks of 1000; every command must be decided (accepted or declined)."""
    outcomes = []
    for start in range(0, len(commands), 1000):
        reply = clients.transactions.SubmitTransactions(
            tx.SubmitTransactionsRequest(commands=commands[start : start + 1000]), timeout=120
        )
        for result in reply.results:
            assert result.HasField("outcome"), (result.error_code, result.error_message)
            assert result.outcome.outcome in DECIDED
            outcomes.append(result.outcome)
    return outcomes


def fundings(card_id: str, count: int, amount: int = MAX_AMOUNT) -> list[tx.TransactionCommand]:
    return [
        tx.TransactionCommand(
            fund=tx.FundCardRequest(
                transaction_id=new_id("fund"), card_id=card_id, amount=usd(amount)
            )
        )
        for _ in range(count)
    ]


def ledger_posted(clients: Clients, account: str, at: int) -> int:
    """The account's posted USD balance once the ledger has applied sequence ``at``."""
    reply = clients.ledger.GetBalance(
        ledger_pb2.GetBalanceRequest(
            account_id=account,
            min_position=ledger_pb2.StreamPosition(stream=clients.settings.stream, sequence=at),
        ),
        timeout=60,
    )
    return sum(int(b.posted) for b in reply.balances if b.currency == "USD")


def check_reads(clients: Clients, card_ids: list[str], at: int) -> dict[str, int]:
    """GetCard, ListCards and the ledger answer for every card; return each card's posted."""
    posted = {}
    for card_id in card_ids:
        card = clients.cards.GetCard(card_pb2.CardRequest(card_id=card_id), timeout=30)
        assert -MAX_AMOUNT <= card.posted <= MAX_CARD_BALANCE
        assert card.available <= MAX_CARD_BALANCE + MAX_AMOUNT
        assert ledger_posted(clients, card_account(card_id), at) == card.posted
        posted[card_id] = card.posted
    token = ""
    while True:
        page = clients.cards.ListCards(
            card_pb2.ListCardsRequest(page_size=1000, page_token=token), timeout=60
        )
        token = page.next_page_token
        if not token:
            break
    return posted


def test_a_house_account_beyond_int64_keeps_every_read_and_the_ledger_working(
    clients: Clients,
) -> None:
    cards = [f"max-{uuid.uuid4().hex[:6]}-{n}" for n in range(93)]
    for card_id in cards:
        clients.issue(card_id)
    per_card = MAX_CARD_BALANCE // MAX_AMOUNT
    outcomes = submit(clients, [c for card in cards for c in fundings(card, per_card + 1)])
    declined = [o for o in outcomes if o.outcome == tx.OUTCOME_DECLINED]
    assert len(declined) == len(cards)  # the one funding too many of each card
    assert {o.reason for o in declined} == {"balance_limit_exceeded"}
    last = max(o.stream_sequence for o in outcomes)
    posted = check_reads(clients, cards, last)
    assert set(posted.values()) == {MAX_CARD_BALANCE}
    # The funding account has sent more than int64 can hold, and still answers exactly.
    assert -ledger_posted(clients, FUNDING, last) >= len(cards) * MAX_CARD_BALANCE > INT64_MAX


OPS = st.lists(
    st.tuples(
        st.sampled_from(["fill", "fund", "adjust", "buy", "hold", "refund"]),
        st.integers(0, 1),
        st.one_of(st.just(MAX_AMOUNT), st.integers(1, MAX_AMOUNT)),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
def test_any_sequence_of_valid_commands_at_the_edges_keeps_reads_answering(
    clients: Clients, ops: list[tuple[str, int, int]]
) -> None:
    token = uuid.uuid4().hex[:6]
    cards = [f"edge-{token}-{n}" for n in range(2)]
    clients.issue(cards[0])
    clients.issue(cards[1], card_pb2.CARD_TYPE_CREDIT, limit=MAX_AMOUNT)
    purchases: list[tuple[str, str]] = []
    last = 0
    for kind, n, amount in ops:
        card = cards[n]
        command: tx.TransactionCommand | None = None
        if kind == "fill":
            outcomes = submit(clients, fundings(card, MAX_CARD_BALANCE // MAX_AMOUNT + 1))
            last = max([last, *(o.stream_sequence for o in outcomes)])
            continue
        if kind == "fund":
            command = fundings(card, 1, amount)[0]
        elif kind == "adjust":
            command = tx.TransactionCommand(
                adjust=tx.AdjustBalanceRequest(
                    transaction_id=new_id("adj"),
                    card_id=card,
                    amount=usd(amount if amount % 2 else -amount),
                    reason="edge",
                    actor="fuzz",
                )
            )
        elif kind == "buy":
            tid = new_id("buy")
            command = tx.TransactionCommand(
                create=tx.CreateTransactionRequest(
                    transaction_id=tid, card_id=card, merchant_id="edge-m", amount=usd(amount)
                )
            )
            purchases.append((card, tid))
        elif kind == "hold":
            command = tx.TransactionCommand(
                authorize=tx.AuthorizeTransactionRequest(
                    transaction_id=new_id("auth"),
                    card_id=card,
                    merchant_id="edge-m",
                    amount=usd(amount),
                )
            )
        elif purchases:
            owner, original = purchases[-1]
            command = tx.TransactionCommand(
                refund=tx.RefundTransactionRequest(
                    transaction_id=new_id("ref"),
                    card_id=owner,
                    original_transaction_id=original,
                    amount=usd(amount),
                )
            )
        if command is not None:
            (outcome,) = submit(clients, [command])
            last = max(last, outcome.stream_sequence)
    posted = check_reads(clients, cards, last)
    assert all(value <= MAX_CARD_BALANCE for value in posted.values())
    assert ledger_posted(clients, merchant_account("edge-m"), last) >= 0


def test_every_service_still_serves(system: DevSystem) -> None:
    for svc in system.services.values():
        assert svc.exited() is None, svc.name
        assert svc.serving(timeout=5), svc.name


def test_status_codes_stay_mapped(clients: Clients) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        clients.cards.GetCard(card_pb2.CardRequest(card_id="no-such-card"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
