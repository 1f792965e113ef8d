"""Small builders for gRPC requests used across the end-to-end tests."""

from __future__ import annotations

import uuid

import nats

from bench.support import service_env as service_env
from bench.support import spawn_service as spawn_service
from bench.support import wait_serving as wait_serving
from jetledger.card.v1 import card_pb2
from jetledger.transaction.v1 import transaction_pb2 as tx


def new_id(prefix: str = "id") -> str:
    """A fresh valid id."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def usd(amount: int, currency: str = "USD") -> tx.Money:
    return tx.Money(amount=amount, currency=currency)


def issue_request(
    card_id: str,
    *,
    card_type: card_pb2.CardType.ValueType = card_pb2.CARD_TYPE_CREDIT,
    credit_limit: int = 10_000,
    currency: str = "USD",
) -> card_pb2.IssueCardRequest:
    return card_pb2.IssueCardRequest(
        command_id=new_id("issue"),
        card_id=card_id,
        cardholder_name="Ada Lovelace",
        card_type=card_type,
        currency=currency,
        credit_limit=credit_limit if card_type == card_pb2.CARD_TYPE_CREDIT else 0,
        last4="4242",
    )


async def stream_last_sequence(nats_url: str, stream: str) -> int:
    """The stream's last sequence, read straight from the server."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.last_seq)
    finally:
        await nc.close()


async def stream_subjects(nats_url: str, stream: str, subject_filter: str) -> dict[str, int]:
    """Per-subject message counts of the stream under ``subject_filter``."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream, subjects_filter=subject_filter)
        return dict(info.state.subjects or {})
    finally:
        await nc.close()
