"""The services' metrics endpoints, scraped over HTTP from in-process servers on real NATS:
per-RPC series from the server interceptor, declines by reason, the process/platform
collectors, and only bounded label values (never an exception's class name)."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts.errors import InvalidArgument, Unavailable
from contracts.subjects import StreamNames
from jetledger.card.v1 import card_pb2, card_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2 as tx
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.card import main as card_main
from services.intake.handler import DECLINE_REASONS, decline_reason, error_outcome
from services.localservers import free_port
from services.preflight import provision
from services.runtime import Runtime
from services.settings import Settings
from services.transaction import main as transaction_main
from tests.e2e.conftest import settings_for
from tests.e2e.support import issue_request, new_id, usd

Samples = list[tuple[str, dict[str, str], float]]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for n, found, v in samples if n == name and labels.items() <= found.items())


@dataclasses.dataclass
class Pair:
    card: Runtime
    transaction: Runtime
    card_metrics: int
    transaction_metrics: int


@pytest.fixture
async def pair(streams: StreamNames, nats_url: str, database_url: str) -> AsyncIterator[Pair]:
    card_metrics, transaction_metrics = free_port(), free_port()
    settings: Settings = settings_for(
        streams,
        nats_url,
        database_url,
        card_metrics_port=card_metrics,
        transaction_metrics_port=transaction_metrics,
    )
    await provision(settings)
    card = await card_main.start(settings, port=0)
    with_card = dataclasses.replace(settings, card_service_addr=f"127.0.0.1:{card.port}")
    transaction = await transaction_main.start(with_card, port=0, sweep_interval=0.5)
    try:
        yield Pair(card, transaction, card_metrics, transaction_metrics)
    finally:
        await transaction.stop(grace=1)
        await card.stop(grace=1)


async def test_rpc_declines_and_process_series_with_bounded_labels(pair: Pair) -> None:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{pair.card.port}") as card_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{pair.transaction.port}") as tx_channel,
    ):
        cards = card_pb2_grpc.CardServiceStub(card_channel)
        transactions = transaction_pb2_grpc.TransactionServiceStub(tx_channel)
        card_id = new_id("card")
        await cards.IssueCard(issue_request(card_id, credit_limit=1_000))
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await cards.IssueCard(card_pb2.IssueCardRequest(command_id="", card_id=""))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as declined:
            await transactions.CreateTransaction(
                tx.CreateTransactionRequest(
                    transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(1_001)
                )
            )
        assert declined.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    card_samples = await asyncio.to_thread(scrape, pair.card_metrics)
    tx_samples = await asyncio.to_thread(scrape, pair.transaction_metrics)
    service = "jetledger.card.v1.CardService"
    handled = "jetledger_grpc_server_handled_total"
    assert value(card_samples, handled, grpc_method="IssueCard", grpc_code="OK") == 1
    assert value(card_samples, handled, grpc_service=service, grpc_code="INVALID_ARGUMENT") == 1
    assert (
        value(card_samples, "jetledger_grpc_server_handling_seconds_count", grpc_method="IssueCard")
        == 2
    )
    assert (
        value(tx_samples, handled, grpc_method="CreateTransaction", grpc_code="FAILED_PRECONDITION")
        == 1
    )
    assert (
        value(
            tx_samples,
            "jetledger_command_declines_total",
            command_type="purchase",
            reason="insufficient_funds",
        )
        == 1
    ), [s for s in tx_samples if s[0].startswith("jetledger_command")]
    # the card service's own lookup (GetCard) from the transaction service counted too
    assert value(card_samples, handled, grpc_method="GetCard") >= 1
    for samples in (card_samples, tx_samples):
        names = {name for name, _, _ in samples}
        assert {
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "python_info",
        } <= names
    outcomes = {
        labels["outcome"]
        for name, labels, _ in card_samples + tx_samples
        if name == "jetledger_commands_total"
    }
    assert outcomes <= {
        "accepted",
        "declined",
        "replayed",
        "invalid_argument",
        "not_found",
        "already_exists",
        "conflict",
        "aborted",
        "unavailable",
        "unauthenticated",
        "permission_denied",
        "declined_error",
        "error",
    }
    reasons = {
        labels["reason"]
        for name, labels, _ in tx_samples
        if name == "jetledger_command_declines_total"
    }
    assert reasons <= DECLINE_REASONS | {"other"}


def test_error_outcomes_and_decline_reasons_are_bounded() -> None:
    assert error_outcome(InvalidArgument("x")) == "invalid_argument"
    assert error_outcome(Unavailable("x")) == "unavailable"
    assert error_outcome(KeyError("x")) == "error"  # never the class name
    assert decline_reason("insufficient_funds") == "insufficient_funds"
    assert decline_reason("made_up_by_a_newer_build") == "other"
