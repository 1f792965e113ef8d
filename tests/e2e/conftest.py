"""Fixtures that run the card and transaction services in-process on real gRPC ports."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from contracts.subjects import StreamNames
from jetledger.card.v1 import card_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.card import main as card_main
from services.preflight import provision
from services.runtime import Runtime
from services.settings import Settings
from services.transaction import main as transaction_main


def settings_for(
    streams: StreamNames, nats_url: str, database_url: str, **overrides: object
) -> Settings:
    """Settings that point at the session's servers and this test's own streams.

    Security off: these tests share the session's plain NATS server, each on streams and a subject
    prefix of its own, and NATS permissions are per deployment (per stream names and prefix). The
    secure path is covered on systems of their own: ``test_security.py``, the CLI suite
    (``test_cli_commands.py``), the demo and the README walkthrough.
    """
    return Settings(
        security=False,
        nats_url=nats_url,
        database_url=database_url,
        stream=streams.source,
        derived_stream=streams.derived,
        subject_prefix=streams.subjects.prefix,
        log_format="console",
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
async def settings(streams: StreamNames, nats_url: str, database_url: str) -> Settings:
    """This test's settings, its streams provisioned (as the provision Job does)."""
    made = settings_for(streams, nats_url, database_url)
    await provision(made)
    return made


@dataclass
class Intake:
    """A running card service + transaction service and stubs for both."""

    settings: Settings
    card_runtime: Runtime
    transaction_runtime: Runtime
    channel: grpc.aio.Channel
    cards: card_pb2_grpc.CardServiceAsyncStub
    transactions: transaction_pb2_grpc.TransactionServiceAsyncStub


@contextlib.asynccontextmanager
async def running_intake(settings: Settings) -> AsyncIterator[Intake]:
    """Card and transaction services on free loopback ports, stopped on exit."""
    card_runtime = await card_main.start(settings, port=0, metrics=False)
    with_card = dataclasses.replace(settings, card_service_addr=f"127.0.0.1:{card_runtime.port}")
    transaction_runtime = await transaction_main.start(
        with_card, port=0, metrics=False, sweep_interval=0.2
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{transaction_runtime.port}")
    card_channel = grpc.aio.insecure_channel(f"127.0.0.1:{card_runtime.port}")
    try:
        yield Intake(
            settings=with_card,
            card_runtime=card_runtime,
            transaction_runtime=transaction_runtime,
            channel=channel,
            cards=card_pb2_grpc.CardServiceStub(card_channel),
            transactions=transaction_pb2_grpc.TransactionServiceStub(channel),
        )
    finally:
        await channel.close()
        await card_channel.close()
        await transaction_runtime.stop(grace=1)
        await card_runtime.stop(grace=1)


@pytest.fixture
async def intake(settings: Settings) -> AsyncIterator[Intake]:
    """Card and transaction services on free loopback ports, stopped after the test."""
    async with running_intake(settings) as running:
        yield running
