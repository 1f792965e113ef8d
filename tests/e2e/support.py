"""Small builders for gRPC requests used across the end-to-end tests."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import nats

from jetledger.card.v1 import card_pb2
from jetledger.transaction.v1 import transaction_pb2 as tx
from services.settings import Settings


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


def service_env(settings: Settings, **overrides: object) -> dict[str, str]:
    """Environment for a service child process: this test's settings as JETLEDGER_* variables."""
    import dataclasses
    import os

    env = dict(os.environ)
    for field in dataclasses.fields(settings):
        if field.name == "extra":
            continue
        env[f"JETLEDGER_{field.name.upper()}"] = str(getattr(settings, field.name))
    for key, value in overrides.items():
        env[f"JETLEDGER_{key.upper()}"] = str(value)
    return env


def spawn_service(module: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m <module>`` as a child process, logging to ``log_path``."""
    import sys

    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT
        )


async def wait_serving(port: int, within: float = 20.0) -> None:
    """Wait until the gRPC server on ``port`` reports SERVING."""
    import asyncio

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = asyncio.get_running_loop().time() + within
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"service on port {port} never became SERVING")
            await asyncio.sleep(0.1)
