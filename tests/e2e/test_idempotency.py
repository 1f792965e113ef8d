"""Card-scoped idempotency: one message per command, retries answered forever (docs/intake.md).

Through real gRPC, a real card service and nats-server, and the command index in real Postgres.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import grpc
import nats
import pytest

from contracts.subjects import StreamNames
from jetledger.card.v1 import card_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2 as tx
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.card import main as card_main
from services.preflight import provision
from services.settings import Settings
from services.transaction import main as transaction_main
from tests.e2e.conftest import settings_for
from tests.e2e.support import issue_request, new_id, stream_subjects, usd


async def _transactions(settings: Settings) -> tuple[object, grpc.aio.Channel]:
    runtime = await transaction_main.start(settings, port=0, metrics=False, sweep_interval=60)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
    return runtime, channel


@pytest.fixture
async def short_window(
    streams: StreamNames, nats_url: str, database_url: str
) -> AsyncIterator[Settings]:
    """Settings with a 1 s duplicate window and a card service running."""
    settings = settings_for(streams, nats_url, database_url, duplicate_window_seconds=1)
    await provision(settings)
    card_runtime = await card_main.start(settings, port=0, metrics=False)
    try:
        yield dataclasses.replace(settings, card_service_addr=f"127.0.0.1:{card_runtime.port}")
    finally:
        await card_runtime.stop(grace=1)


async def _issue(settings: Settings, card_id: str) -> None:
    async with grpc.aio.insecure_channel(settings.card_target) as channel:
        await card_pb2_grpc.CardServiceStub(channel).IssueCard(
            issue_request(card_id, credit_limit=10_000)
        )


def _purchase(tx_id: str, card_id: str, amount: int) -> tx.CreateTransactionRequest:
    return tx.CreateTransactionRequest(
        transaction_id=tx_id, card_id=card_id, merchant_id="shop", amount=usd(amount)
    )


async def test_retries_replay_beyond_the_duplicate_window_and_after_a_restart(
    short_window: Settings, nats_url: str
) -> None:
    settings = short_window
    card_id = new_id("card")
    await _issue(settings, card_id)
    bought, declined, funded = new_id("t"), new_id("t"), new_id("f")
    runtime, channel = await _transactions(settings)
    stub = transaction_pb2_grpc.TransactionServiceStub(channel)
    try:
        first = await stub.CreateTransaction(_purchase(bought, card_id, 4_000))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateTransaction(_purchase(declined, card_id, 999_999))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await stub.FundCard(
            tx.FundCardRequest(transaction_id=funded, card_id=card_id, amount=usd(1))
        )
        await asyncio.sleep(1.5)  # past the stream's duplicate window
        again = await stub.CreateTransaction(_purchase(bought, card_id, 4_000))
        assert (
            again.outcome.replayed
            and again.outcome.stream_sequence == first.outcome.stream_sequence
        )
    finally:
        await channel.close()
        await runtime.stop(grace=1)  # type: ignore[attr-defined]

    # A new intake process knows nothing in memory: the card's history answers.
    runtime, channel = await _transactions(settings)
    stub = transaction_pb2_grpc.TransactionServiceStub(channel)
    try:
        after = await stub.CreateTransaction(_purchase(bought, card_id, 4_000))
        assert after.outcome.replayed
        assert after.outcome.stream_sequence == first.outcome.stream_sequence
        with pytest.raises(grpc.aio.AioRpcError) as replayed_decline:
            await stub.CreateTransaction(_purchase(declined, card_id, 999_999))
        assert replayed_decline.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # A plain read is not a replay (issue 15).
        read = await stub.GetCommandOutcome(tx.GetCommandOutcomeRequest(transaction_id=bought))
        assert not read.outcome.replayed and read.outcome.command_type == "purchase"
        read = await stub.GetCommandOutcome(tx.GetCommandOutcomeRequest(transaction_id=declined))
        assert read.outcome.outcome == tx.OUTCOME_DECLINED
        assert read.outcome.reason == "insufficient_funds" and not read.outcome.replayed
    finally:
        await channel.close()
        await runtime.stop(grace=1)  # type: ignore[attr-defined]

    # One message per command (three commands, one issue), and no per-command subjects at all.
    prefix = settings.subject_prefix
    subjects = await stream_subjects(nats_url, settings.stream, f"{prefix}>")
    assert not [s for s in subjects if s.startswith(f"{prefix}command.")]
    assert sum(subjects.values()) == 4


async def test_a_reused_id_with_another_payload_names_the_original_command(
    short_window: Settings,
) -> None:
    settings = short_window
    card_id, other_card = new_id("card"), new_id("card")
    await _issue(settings, card_id)
    await _issue(settings, other_card)
    runtime, channel = await _transactions(settings)
    stub = transaction_pb2_grpc.TransactionServiceStub(channel)
    try:
        tx_id = new_id("t")
        await stub.CreateTransaction(_purchase(tx_id, card_id, 100))
        with pytest.raises(grpc.aio.AioRpcError) as other_payload:
            await stub.FundCard(
                tx.FundCardRequest(transaction_id=tx_id, card_id=card_id, amount=usd(5))
            )
        assert other_payload.value.code() == grpc.StatusCode.ALREADY_EXISTS
        details = other_payload.value.details() or ""
        assert "by a purchase command" in details and "fund_card" in details
        with pytest.raises(grpc.aio.AioRpcError) as other_card_use:
            await stub.CreateTransaction(_purchase(tx_id, other_card, 100))
        assert other_card_use.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert card_id in (other_card_use.value.details() or "")
    finally:
        await channel.close()
        await runtime.stop(grace=1)  # type: ignore[attr-defined]


async def test_no_marker_subjects_in_the_stream(short_window: Settings, nats_url: str) -> None:
    settings = short_window
    card_id = new_id("card")
    await _issue(settings, card_id)
    runtime, channel = await _transactions(settings)
    stub = transaction_pb2_grpc.TransactionServiceStub(channel)
    try:
        reply = await stub.SubmitTransactions(
            tx.SubmitTransactionsRequest(
                commands=[
                    tx.TransactionCommand(create=_purchase(new_id("t"), card_id, 10))
                    for _ in range(20)
                ]
            )
        )
        assert all(r.outcome.outcome == tx.OUTCOME_ACCEPTED for r in reply.results)
    finally:
        await channel.close()
        await runtime.stop(grace=1)  # type: ignore[attr-defined]
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(settings.stream, subjects_filter=">")
        assert info.state.messages == 21
        assert not [s for s in (info.state.subjects or {}) if ".command." in f".{s}"]
    finally:
        await nc.close()
