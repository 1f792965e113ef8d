"""Command intake through real gRPC, a real card service and a real nats-server."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2
from google.rpc.error_details_pb2 import ErrorInfo
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from contracts.codec import decode_event
from contracts.events import TransactionExpired
from jetledger.card.v1 import card_pb2
from jetledger.transaction.v1 import transaction_pb2 as tx
from services.grpc_errors import REASON_METADATA_KEY
from tests.e2e.conftest import Intake
from tests.e2e.support import issue_request, new_id, stream_last_sequence, stream_subjects, usd


def _reason(exc: grpc.aio.AioRpcError) -> str:
    return str(dict(exc.trailing_metadata() or ()).get(REASON_METADATA_KEY, ""))


async def _card(intake: Intake, **kwargs: object) -> str:
    card_id = new_id("card")
    await intake.cards.IssueCard(issue_request(card_id, **kwargs))  # type: ignore[arg-type]
    return card_id


async def test_reflection_lists_the_services(intake: Intake) -> None:
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(intake.channel)  # type: ignore[arg-type]

    async def ask() -> list[str]:
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        async for response in responses:
            return [s.name for s in response.list_services_response.service]
        return []

    names = await ask()
    assert "jetledger.transaction.v1.TransactionService" in names
    assert "grpc.health.v1.Health" in names


async def test_get_card_never_shows_a_pan_and_tracks_balances(intake: Intake) -> None:
    card_id = await _card(intake, credit_limit=50_000)
    await intake.transactions.CreateTransaction(
        tx.CreateTransactionRequest(
            transaction_id=new_id("t"), card_id=card_id, merchant_id="shop", amount=usd(1_250)
        )
    )
    card = await intake.cards.GetCard(card_pb2.CardRequest(card_id=card_id))
    assert card.status == card_pb2.CARD_STATUS_ACTIVE
    assert (card.posted, card.pending, card.available) == (-1_250, 0, 48_750)
    assert card.last4 == "4242" and card.account_id == f"card-{card_id}"
    assert card.version > 0
    assert "cvv" not in str(card).lower()


async def test_purchase_is_recorded_with_balanced_legs(intake: Intake, nats_url: str) -> None:
    card_id = await _card(intake, card_type=card_pb2.CARD_TYPE_PREPAID)
    await intake.transactions.FundCard(
        tx.FundCardRequest(transaction_id=new_id("f"), card_id=card_id, amount=usd(5_000))
    )
    reply = await intake.transactions.CreateTransaction(
        tx.CreateTransactionRequest(
            transaction_id=new_id("t"), card_id=card_id, merchant_id="m1", amount=usd(1_999)
        )
    )
    assert reply.outcome.outcome == tx.OUTCOME_ACCEPTED
    assert reply.outcome.stream == intake.settings.stream and reply.outcome.stream_sequence > 0
    # issued, funded and the purchase: every event of the card on its one subject
    subjects = await stream_subjects(
        nats_url, intake.settings.stream, f"{intake.settings.subject_prefix}card.{card_id}.>"
    )
    assert subjects == {}
    subjects = await stream_subjects(
        nats_url, intake.settings.stream, f"{intake.settings.subject_prefix}card.{card_id}"
    )
    assert subjects == {f"{intake.settings.subject_prefix}card.{card_id}": 3}


async def test_decline_is_recorded_and_replayed(intake: Intake, nats_url: str) -> None:
    card_id = await _card(intake, credit_limit=1_000)
    request = tx.CreateTransactionRequest(
        transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(1_001)
    )
    before = await stream_last_sequence(nats_url, intake.settings.stream)
    with pytest.raises(grpc.aio.AioRpcError) as first:
        await intake.transactions.CreateTransaction(request)
    assert first.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(first.value) == "insufficient_funds"
    last = await stream_last_sequence(nats_url, intake.settings.stream)
    assert last == before + 1, "the decline is recorded: one event"

    with pytest.raises(grpc.aio.AioRpcError) as again:
        await intake.transactions.CreateTransaction(request)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(again.value) == "insufficient_funds"
    assert await stream_last_sequence(nats_url, intake.settings.stream) == last, (
        "a retry appends nothing"
    )

    outcome = await intake.transactions.GetCommandOutcome(
        tx.GetCommandOutcomeRequest(transaction_id=request.transaction_id)
    )
    assert outcome.outcome.outcome == tx.OUTCOME_DECLINED
    assert outcome.outcome.reason == "insufficient_funds"
    assert outcome.outcome.stream_sequence == last


async def test_retry_replays_and_changed_payload_is_already_exists(
    intake: Intake, nats_url: str
) -> None:
    card_id = await _card(intake)
    request = tx.CreateTransactionRequest(
        transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(300)
    )
    first = await intake.transactions.CreateTransaction(request)
    last = await stream_last_sequence(nats_url, intake.settings.stream)
    second = await intake.transactions.CreateTransaction(request)
    assert second.outcome.replayed and not first.outcome.replayed
    assert second.outcome.stream_sequence == first.outcome.stream_sequence
    assert await stream_last_sequence(nats_url, intake.settings.stream) == last

    changed = tx.CreateTransactionRequest(
        transaction_id=request.transaction_id, card_id=card_id, merchant_id="m", amount=usd(301)
    )
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await intake.transactions.CreateTransaction(changed)
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await stream_last_sequence(nats_url, intake.settings.stream) == last


async def test_holds_capture_void_refund(intake: Intake) -> None:
    card_id = await _card(intake, credit_limit=10_000)
    auth = new_id("a")
    await intake.transactions.AuthorizeTransaction(
        tx.AuthorizeTransactionRequest(
            transaction_id=auth, card_id=card_id, merchant_id="hotel", amount=usd(6_000)
        )
    )
    card = await intake.cards.GetCard(card_pb2.CardRequest(card_id=card_id))
    assert (card.posted, card.pending, card.available) == (0, 6_000, 4_000)

    capture = new_id("c")
    await intake.transactions.CaptureTransaction(
        tx.CaptureTransactionRequest(
            transaction_id=capture, card_id=card_id, authorization_id=auth, amount=usd(2_500)
        )
    )
    await intake.transactions.CaptureTransaction(
        tx.CaptureTransactionRequest(
            transaction_id=new_id("c"), card_id=card_id, authorization_id=auth, amount=usd(1_500)
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as too_much:
        await intake.transactions.CaptureTransaction(
            tx.CaptureTransactionRequest(
                transaction_id=new_id("c"),
                card_id=card_id,
                authorization_id=auth,
                amount=usd(2_001),
            )
        )
    assert _reason(too_much.value) == "capture_exceeds_authorization"
    await intake.transactions.VoidTransaction(
        tx.VoidTransactionRequest(
            transaction_id=new_id("v"), card_id=card_id, authorization_id=auth
        )
    )
    card = await intake.cards.GetCard(card_pb2.CardRequest(card_id=card_id))
    assert (card.posted, card.pending, card.available) == (-4_000, 0, 6_000)

    with pytest.raises(grpc.aio.AioRpcError) as refund_too_much:
        await intake.transactions.RefundTransaction(
            tx.RefundTransactionRequest(
                transaction_id=new_id("r"),
                card_id=card_id,
                original_transaction_id=capture,
                amount=usd(2_501),
            )
        )
    assert _reason(refund_too_much.value) == "refund_exceeds_captured"
    await intake.transactions.RefundTransaction(
        tx.RefundTransactionRequest(
            transaction_id=new_id("r"),
            card_id=card_id,
            original_transaction_id=capture,
            amount=usd(2_500),
        )
    )
    card = await intake.cards.GetCard(card_pb2.CardRequest(card_id=card_id))
    assert card.posted == -1_500


async def test_expired_hold_stops_counting_and_the_sweeper_records_it(intake: Intake) -> None:
    card_id = await _card(intake, credit_limit=1_000)
    expires = Timestamp()
    expires.FromDatetime(datetime.now(UTC) + timedelta(milliseconds=600))
    auth = new_id("a")
    await intake.transactions.AuthorizeTransaction(
        tx.AuthorizeTransactionRequest(
            transaction_id=auth,
            card_id=card_id,
            merchant_id="fuel",
            amount=usd(900),
            expires_at=expires,
        )
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await intake.transactions.CreateTransaction(
            tx.CreateTransactionRequest(
                transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(500)
            )
        )
    await asyncio.sleep(0.7)
    # The hold lapsed: spending works at once, whether or not the sweeper has run yet.
    await intake.transactions.CreateTransaction(
        tx.CreateTransactionRequest(
            transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(500)
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await intake.transactions.CaptureTransaction(
            tx.CaptureTransactionRequest(
                transaction_id=new_id("c"), card_id=card_id, authorization_id=auth, amount=usd(100)
            )
        )
    assert _reason(late.value) in {"authorization_expired", "authorization_not_open"}

    import nats

    from eventstore import EventStore  # the sweeper's event must reach the stream

    nc = await nats.connect(intake.settings.nats_url)
    try:
        store = EventStore(nc, intake.settings.streams)
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            loaded = await store.load(intake.settings.streams.subjects.card(card_id))
            events = [decode_event(m.data) for m in loaded.messages]
            if any(
                isinstance(e, TransactionExpired) and e.authorization_id == auth for e in events
            ):
                break
            assert asyncio.get_running_loop().time() < deadline, (
                "the sweeper never recorded the expiry"
            )
            await asyncio.sleep(0.1)
        assert sum(isinstance(e, TransactionExpired) for e in events) == 1
    finally:
        await nc.close()


async def test_submit_transactions_gives_each_command_its_outcome(intake: Intake) -> None:
    card_id = await _card(intake, credit_limit=1_000)
    commands = [
        tx.TransactionCommand(
            create=tx.CreateTransactionRequest(
                transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(400)
            )
        ),
        tx.TransactionCommand(
            create=tx.CreateTransactionRequest(
                transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(400)
            )
        ),
        tx.TransactionCommand(
            create=tx.CreateTransactionRequest(
                transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(400)
            )
        ),
        tx.TransactionCommand(
            create=tx.CreateTransactionRequest(
                transaction_id="bad id", card_id=card_id, merchant_id="m", amount=usd(1)
            )
        ),
        tx.TransactionCommand(
            create=tx.CreateTransactionRequest(
                transaction_id=new_id("t"), card_id=new_id("nocard"), merchant_id="m", amount=usd(1)
            )
        ),
        tx.TransactionCommand(),
    ]
    reply = await intake.transactions.SubmitTransactions(
        tx.SubmitTransactionsRequest(commands=commands)
    )
    results = list(reply.results)
    assert [r.outcome.outcome for r in results[:3]] == [
        tx.OUTCOME_ACCEPTED,
        tx.OUTCOME_ACCEPTED,
        tx.OUTCOME_DECLINED,
    ]
    assert results[2].outcome.reason == "insufficient_funds"
    assert results[3].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert results[4].error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert results[5].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_frozen_card_declines_until_unfrozen(intake: Intake) -> None:
    card_id = await _card(intake)
    await intake.cards.FreezeCard(
        card_pb2.FreezeCardRequest(command_id=new_id("fz"), card_id=card_id, reason="lost")
    )
    with pytest.raises(grpc.aio.AioRpcError) as frozen:
        await intake.transactions.CreateTransaction(
            tx.CreateTransactionRequest(
                transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(10)
            )
        )
    assert _reason(frozen.value) == "card_frozen"
    await intake.cards.UnfreezeCard(
        card_pb2.UnfreezeCardRequest(command_id=new_id("uf"), card_id=card_id)
    )
    await intake.transactions.CreateTransaction(
        tx.CreateTransactionRequest(
            transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(10)
        )
    )


async def test_list_cards_pages_through_every_card(intake: Intake) -> None:
    issued = sorted([await _card(intake) for _ in range(5)])
    seen: list[str] = []
    token = ""
    while True:
        page = await intake.cards.ListCards(
            card_pb2.ListCardsRequest(page_size=2, page_token=token)
        )
        seen += [c.card_id for c in page.cards]
        token = page.next_page_token
        if not token:
            break
    assert seen == issued


async def test_unknown_card_is_not_found(intake: Intake) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await intake.cards.GetCard(card_pb2.CardRequest(card_id="no-such-card"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as missing_tx:
        await intake.transactions.CreateTransaction(
            tx.CreateTransactionRequest(
                transaction_id=new_id("t"), card_id="no-such-card", merchant_id="m", amount=usd(1)
            )
        )
    assert missing_tx.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as no_outcome:
        await intake.transactions.GetCommandOutcome(
            tx.GetCommandOutcomeRequest(transaction_id="never-sent")
        )
    assert no_outcome.value.code() == grpc.StatusCode.NOT_FOUND


def _typed_details(exc: grpc.aio.AioRpcError) -> tuple[ErrorInfo, tx.CommandOutcome]:
    """The decline's google.rpc.Status details, read as any gRPC client would (grpcio-status)."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, "a decline carries a google.rpc.Status"
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert status.message == exc.details()
    return _unpack(status)


def _unpack(status: status_pb2.Status) -> tuple[ErrorInfo, tx.CommandOutcome]:
    info, outcome = ErrorInfo(), tx.CommandOutcome()
    assert [d.TypeName() for d in status.details] == [
        "google.rpc.ErrorInfo",
        "jetledger.transaction.v1.CommandOutcome",
    ]
    assert status.details[0].Unpack(info) and status.details[1].Unpack(outcome)
    return info, outcome


async def test_a_unary_decline_is_a_typed_error_detail_and_a_replay_says_so(
    intake: Intake,
) -> None:
    card_id = await _card(intake, credit_limit=1_000)
    request = tx.AuthorizeTransactionRequest(
        transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(1_001)
    )
    with pytest.raises(grpc.aio.AioRpcError) as first:
        await intake.transactions.AuthorizeTransaction(request)
    info, outcome = _typed_details(first.value)
    assert (info.reason, info.domain) == ("INSUFFICIENT_FUNDS", "jetledger.transaction.v1")
    assert outcome.outcome == tx.OUTCOME_DECLINED and outcome.reason == "insufficient_funds"
    assert outcome.detail and "insufficient_funds" not in outcome.detail
    assert outcome.stream == intake.settings.stream and outcome.stream_sequence > 0
    assert outcome.transaction_id == request.transaction_id and outcome.card_id == card_id
    assert outcome.command_type and not outcome.replayed
    assert dict(info.metadata) == {
        "reason": "insufficient_funds",
        "transaction_id": request.transaction_id,
        "card_id": card_id,
        "command_type": outcome.command_type,
        "stream": outcome.stream,
        "stream_sequence": str(outcome.stream_sequence),
        "replayed": "false",
    }
    assert _reason(first.value) == "insufficient_funds"  # the trailer stays for older clients

    with pytest.raises(grpc.aio.AioRpcError) as again:
        await intake.transactions.AuthorizeTransaction(request)
    info_again, replayed = _typed_details(again.value)
    assert replayed.replayed and info_again.metadata["replayed"] == "true"
    assert (replayed.stream_sequence, replayed.reason, replayed.detail) == (
        outcome.stream_sequence,
        outcome.reason,
        outcome.detail,
    )


async def test_submit_gives_a_declined_item_the_same_status_as_the_unary_call(
    intake: Intake,
) -> None:
    card_id = await _card(intake, credit_limit=1_000)
    declined = tx.CreateTransactionRequest(
        transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(1_001)
    )
    accepted = tx.CreateTransactionRequest(
        transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(10)
    )
    bad = tx.CreateTransactionRequest(
        transaction_id="bad id", card_id=card_id, merchant_id="m", amount=usd(1)
    )
    batch = tx.SubmitTransactionsRequest(
        commands=[tx.TransactionCommand(create=r) for r in (declined, accepted, bad)]
    )
    first = list((await intake.transactions.SubmitTransactions(batch)).results)

    assert first[1].outcome.outcome == tx.OUTCOME_ACCEPTED and not first[1].HasField("status")
    info, outcome = _unpack(first[0].status)
    assert first[0].status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert outcome == first[0].outcome and not outcome.replayed
    assert info.reason == "INSUFFICIENT_FUNDS" and info.metadata["replayed"] == "false"
    assert first[2].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] == first[2].error_code
    assert first[2].status.message == first[2].error_message
    assert first[2].error_message.startswith("transaction_id must match"), first[2].error_message

    # The same decline, asked alone: the unary call's status is the batch item's, replayed.
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await intake.transactions.CreateTransaction(declined)
    unary_info, unary_outcome = _typed_details(unary.value)
    assert unary_outcome.replayed and unary_info.metadata["replayed"] == "true"
    unary_outcome.replayed = False
    assert unary_outcome == outcome
    fresh_words = first[0].status.message.removesuffix(")")
    assert unary.value.details() == f"{fresh_words}; a retry, answered with the original decision)"

    again = list((await intake.transactions.SubmitTransactions(batch)).results)
    assert again[0].outcome.replayed and again[1].outcome.replayed
    assert _unpack(again[0].status)[1].replayed


async def test_a_card_lifecycle_decline_carries_the_same_details(intake: Intake) -> None:
    card_id = await _card(intake)
    command_id = new_id("unfreeze")
    with pytest.raises(grpc.aio.AioRpcError) as declined:
        await intake.cards.UnfreezeCard(
            card_pb2.UnfreezeCardRequest(command_id=command_id, card_id=card_id)
        )
    info, outcome = _typed_details(declined.value)
    assert info.reason == "CARD_NOT_FROZEN" and outcome.reason == "card_not_frozen"
    assert outcome.transaction_id == command_id and outcome.outcome == tx.OUTCOME_DECLINED
    read = await intake.transactions.GetCommandOutcome(
        tx.GetCommandOutcomeRequest(transaction_id=command_id)
    )
    assert read.outcome.stream_sequence == outcome.stream_sequence


async def test_grpcurl_decodes_a_declines_details_through_reflection(intake: Intake) -> None:
    """A client in another language needs no jetledger code: reflection serves the detail types."""
    card_id = await _card(intake, credit_limit=1_000)
    body = json.dumps(
        {
            "transaction_id": new_id("t"),
            "card_id": card_id,
            "merchant_id": "m",
            "amount": {"amount": 5_000, "currency": "USD"},
        }
    )
    grpcurl = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "grpcurl"),
        "-plaintext",
        "-d",
        body,
        f"127.0.0.1:{intake.transaction_runtime.port}",
        "jetledger.transaction.v1.TransactionService/CreateTransaction",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(grpcurl.communicate(), timeout=60)
    shown = err.decode()
    assert grpcurl.returncode != 0 and "FailedPrecondition" in shown, shown
    assert '"@type":"type.googleapis.com/google.rpc.ErrorInfo"' in shown, shown
    assert '"reason":"INSUFFICIENT_FUNDS"' in shown, shown
    assert '"@type":"type.googleapis.com/jetledger.transaction.v1.CommandOutcome"' in shown, shown
    assert '"outcome":"OUTCOME_DECLINED"' in shown, shown
