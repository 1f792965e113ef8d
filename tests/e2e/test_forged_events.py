"""The write path never decides on a forged event: with an event keyring, the intake's reads of a
card's history fail closed (``DATA_LOSS``) when a message on it does not carry a MAC that checks —
the case where a forger got past the NATS permissions (this test's NATS has none at all)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from bench.histories import Events
from contracts.codec import encode
from contracts.subjects import StreamNames
from eventstore.integrity import Keyring
from jetledger.card.v1 import card_pb2
from jetledger.transaction.v1 import transaction_pb2 as tx
from services.preflight import provision
from services.settings import Settings
from tests.e2e.conftest import Intake, settings_for
from tests.e2e.support import issue_request, new_id, stream_last_sequence, usd
from tests.ledgerkit import nats_client

RING = Keyring("k1", {"k1": os.urandom(32)})


@pytest.fixture
async def settings(
    streams: StreamNames, nats_url: str, database_url: str, tmp_path: Path
) -> Settings:
    """The e2e intake's settings, with an event keyring: every event sealed, every read checked;
    its streams provisioned (as the provision Job does)."""
    keys = tmp_path / "event-keys.json"
    keys.write_text(RING.to_json())
    made = settings_for(streams, nats_url, database_url, event_keys_file=str(keys))
    await provision(made)
    return made


async def test_a_forged_event_is_never_decided_on(intake: Intake, nats_url: str) -> None:
    card_id = new_id("card")
    await intake.cards.IssueCard(issue_request(card_id))
    await intake.transactions.FundCard(
        tx.FundCardRequest(transaction_id=new_id("f"), card_id=card_id, amount=usd(500))
    )
    spend = tx.CreateTransactionRequest(card_id=card_id, merchant_id="m", amount=usd(100))
    spent = await intake.transactions.CreateTransaction(
        tx.CreateTransactionRequest(
            transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(100)
        )
    )
    assert spent.outcome.outcome == tx.OUTCOME_ACCEPTED  # sealed events check
    # A million on the card, published raw: no MAC.
    stream = intake.settings.stream
    async with nats_client(nats_url) as nc:
        forged = Events(card_id).fund(100_000_000)
        await nc.jetstream().publish(
            intake.settings.streams.subjects.card(card_id),
            encode(forged),
            stream=stream,
        )
    before = await stream_last_sequence(nats_url, stream)
    spend.transaction_id = new_id("t")
    spend.amount.CopyFrom(usd(50_000_000))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await intake.transactions.CreateTransaction(spend)
    assert refused.value.code() == grpc.StatusCode.DATA_LOSS
    assert "MAC missing" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as unread:
        await intake.cards.GetCard(card_pb2.CardRequest(card_id=card_id))
    assert unread.value.code() == grpc.StatusCode.DATA_LOSS
    assert await stream_last_sequence(nats_url, stream) == before  # nothing was appended
