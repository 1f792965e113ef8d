"""Bad input through real gRPC: INVALID_ARGUMENT (or NOT_FOUND), and nothing appended."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from jetledger.card.v1 import card_pb2
from jetledger.transaction.v1 import transaction_pb2 as tx
from services.settings import Settings
from services.transaction import main as transaction_main
from tests.e2e.conftest import Intake
from tests.e2e.support import issue_request, new_id, stream_last_sequence, usd

CARD = "card-under-test"


def _purchase(**overrides: object) -> tx.CreateTransactionRequest:
    fields: dict[str, object] = {
        "transaction_id": new_id("t"),
        "card_id": CARD,
        "merchant_id": "m",
        "amount": usd(100),
        "description": "",
    }
    fields.update(overrides)
    return tx.CreateTransactionRequest(**fields)  # type: ignore[arg-type]


BAD_PURCHASES = {
    "zero amount": _purchase(amount=usd(0)),
    "negative amount": _purchase(amount=usd(-5)),
    "overflowing amount": _purchase(amount=usd(2**63 - 1)),
    "unknown currency": _purchase(amount=usd(100, "XYZ")),
    "lower-case currency": _purchase(amount=usd(100, "usd")),
    "missing amount": tx.CreateTransactionRequest(
        transaction_id="t-missing", card_id=CARD, merchant_id="m"
    ),
    "malformed transaction id": _purchase(transaction_id="has space"),
    "subject-breaking id": _purchase(transaction_id="a.b"),
    "wildcard id": _purchase(transaction_id="a*"),
    "oversize id": _purchase(transaction_id="x" * 65),
    "missing transaction id": _purchase(transaction_id=""),
    "missing merchant": _purchase(merchant_id=""),
    "malformed merchant": _purchase(merchant_id="m>"),
    "oversize description": _purchase(description="d" * 10_000),
    "card number in description": _purchase(description="card 4111111111111111"),
}


@pytest.mark.parametrize("request_", list(BAD_PURCHASES.values()), ids=list(BAD_PURCHASES))
async def test_bad_purchases_are_invalid_and_append_nothing(
    intake: Intake, nats_url: str, request_: tx.CreateTransactionRequest
) -> None:
    if not await _has_card(intake):
        await intake.cards.IssueCard(issue_request(CARD, credit_limit=10_000))
    before = await stream_last_sequence(nats_url, intake.settings.stream)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await intake.transactions.CreateTransaction(request_)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.value.details()
    assert failed.value.details(), "the error names what is wrong"
    assert await stream_last_sequence(nats_url, intake.settings.stream) == before


async def _has_card(intake: Intake) -> bool:
    try:
        await intake.cards.GetCard(card_pb2.CardRequest(card_id=CARD))
    except grpc.aio.AioRpcError:
        return False
    return True


BAD_CARDS = {
    "malformed card id": card_pb2.IssueCardRequest(
        command_id="c1",
        card_id="bad id",
        cardholder_name="A",
        card_type=card_pb2.CARD_TYPE_DEBIT,
        currency="USD",
        last4="1234",
    ),
    "full PAN as last4": card_pb2.IssueCardRequest(
        command_id="c2",
        card_id="ok1",
        cardholder_name="A",
        card_type=card_pb2.CARD_TYPE_DEBIT,
        currency="USD",
        last4="4111111111111111",
    ),
    "cvv-like last4": card_pb2.IssueCardRequest(
        command_id="c3",
        card_id="ok2",
        cardholder_name="A",
        card_type=card_pb2.CARD_TYPE_DEBIT,
        currency="USD",
        last4="123",
    ),
    "missing type": card_pb2.IssueCardRequest(
        command_id="c4", card_id="ok3", cardholder_name="A", currency="USD", last4="1234"
    ),
    "limit on a debit card": card_pb2.IssueCardRequest(
        command_id="c5",
        card_id="ok4",
        cardholder_name="A",
        card_type=card_pb2.CARD_TYPE_DEBIT,
        currency="USD",
        credit_limit=5,
        last4="1234",
    ),
    "negative limit": card_pb2.IssueCardRequest(
        command_id="c6",
        card_id="ok5",
        cardholder_name="A",
        card_type=card_pb2.CARD_TYPE_CREDIT,
        currency="USD",
        credit_limit=-5,
        last4="1234",
    ),
    "missing name": card_pb2.IssueCardRequest(
        command_id="c7",
        card_id="ok6",
        card_type=card_pb2.CARD_TYPE_DEBIT,
        currency="USD",
        last4="1234",
    ),
    "oversize name": card_pb2.IssueCardRequest(
        command_id="c8",
        card_id="ok7",
        cardholder_name="n" * 500,
        card_type=card_pb2.CARD_TYPE_DEBIT,
        currency="USD",
        last4="1234",
    ),
    "unknown currency": card_pb2.IssueCardRequest(
        command_id="c9",
        card_id="ok8",
        cardholder_name="A",
        card_type=card_pb2.CARD_TYPE_DEBIT,
        currency="ABC",
        last4="1234",
    ),
}


@pytest.mark.parametrize("request_", list(BAD_CARDS.values()), ids=list(BAD_CARDS))
async def test_bad_cards_are_invalid_and_append_nothing(
    intake: Intake, nats_url: str, request_: card_pb2.IssueCardRequest
) -> None:
    before = await stream_last_sequence(nats_url, intake.settings.stream)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await intake.cards.IssueCard(request_)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.value.details()
    assert await stream_last_sequence(nats_url, intake.settings.stream) == before


async def test_card_service_down_is_unavailable(settings: Settings, nats_url: str) -> None:
    dead = dataclasses.replace(
        settings, card_service_addr="127.0.0.1:9", card_lookup_timeout_seconds=0.5
    )
    runtime = await transaction_main.start(dead, port=0, metrics=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
    try:
        stub = __import__(
            "jetledger.transaction.v1.transaction_pb2_grpc", fromlist=["x"]
        ).TransactionServiceStub(channel)
        before = await stream_last_sequence(nats_url, settings.stream)
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await stub.CreateTransaction(_purchase())
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "card service" in (down.value.details() or "")
        assert await stream_last_sequence(nats_url, settings.stream) == before
    finally:
        await channel.close()
        await runtime.stop(grace=1)
