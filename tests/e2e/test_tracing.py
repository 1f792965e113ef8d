"""One payment, one trace: the gRPC call at the intake, the ledger and notification projections
that apply its events, and the webhook delivery it causes, on a running system (all four services
in this process, so the SDK's in-memory exporter sees every span; real NATS and Postgres)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.subjects import StreamNames
from jetledger.card.v1 import card_pb2_grpc
from jetledger.notification.v1 import notification_pb2 as pb
from jetledger.notification.v1 import notification_pb2_grpc as pb_grpc
from jetledger.transaction.v1 import transaction_pb2 as tx
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.card import main as card_main
from services.ledger import main as ledger_main
from services.localservers import free_port
from services.notification import main as notification_main
from services.observability.tracing import tracer_provider
from services.preflight import migrate, provision
from services.settings import Settings
from services.transaction import main as transaction_main
from tests.e2e.conftest import settings_for
from tests.e2e.support import issue_request, new_id, usd
from tests.notifykit import WebhookReceiver, fresh_database

pytestmark = [
    pytest.mark.timeout(180),
    # In-process, the ledger and notification services' shutdown leaves a socket and a Postgres
    # connection to the garbage collector (their processes exit instead); not what this tests.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Tracing on for this test only: an SDK provider whose spans land in memory."""
    exporter = InMemorySpanExporter()
    provider: TracerProvider = tracer_provider("test", SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    return exporter


async def until(predicate: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def serving(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)

        async def up() -> bool:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            except grpc.aio.AioRpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        await until(up)


@dataclasses.dataclass
class System:
    settings: Settings
    card: str
    transaction: str
    notification: str


@pytest.fixture
async def system(streams: StreamNames, nats_url: str, database_url: str) -> AsyncIterator[System]:
    async with fresh_database(database_url) as db:
        settings = settings_for(
            streams,
            nats_url,
            db,
            **{
                f"{name}_{kind}": free_port()
                for name in ("ledger", "notification")
                for kind in ("port", "metrics_port")
            },
            webhook_allow_networks="127.0.0.0/8",
            webhook_backoff_base_seconds=0.05,
        )
        await provision(settings)
        await migrate(settings)
        card = await card_main.start(settings, port=0, metrics=False)
        settings = dataclasses.replace(settings, card_service_addr=f"127.0.0.1:{card.port}")
        transaction = await transaction_main.start(settings, port=0, metrics=False)
        stop = asyncio.Event()

        async def stopped() -> None:
            await stop.wait()

        tasks = [
            asyncio.create_task(ledger_main.serve(settings, until=stopped)),
            asyncio.create_task(notification_main.serve(settings, until=stopped)),
        ]
        try:
            await serving(f"127.0.0.1:{settings.ledger_port}")
            await serving(f"127.0.0.1:{settings.notification_port}")
            yield System(
                settings,
                f"127.0.0.1:{card.port}",
                f"127.0.0.1:{transaction.port}",
                f"127.0.0.1:{settings.notification_port}",
            )
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
            await transaction.stop(grace=1)
            await card.stop(grace=1)


def trace_of(span: ReadableSpan) -> int:
    assert span.context is not None
    trace_id: int = span.context.trace_id
    return trace_id


async def test_one_trace_spans_intake_projections_and_webhook_delivery(
    spans: InMemorySpanExporter, system: System
) -> None:
    card_id = new_id("card")
    with WebhookReceiver().running() as hook:
        async with (
            grpc.aio.insecure_channel(system.card) as card_channel,
            grpc.aio.insecure_channel(system.transaction) as tx_channel,
            grpc.aio.insecure_channel(system.notification) as notify_channel,
        ):
            await card_pb2_grpc.CardServiceStub(card_channel).IssueCard(issue_request(card_id))
            await pb_grpc.NotificationServiceStub(notify_channel).SetWebhookEndpoint(
                pb.SetWebhookEndpointRequest(
                    command_id=new_id("hook"),
                    card_id=card_id,
                    endpoint_id="e1",
                    url=hook.url,
                    secret="trace-test-secret-0123456789",
                )
            )
            purchase = tx.CreateTransactionRequest(
                transaction_id=new_id("t"), card_id=card_id, merchant_id="m", amount=usd(250)
            )
            await transaction_pb2_grpc.TransactionServiceStub(tx_channel).CreateTransaction(
                purchase
            )

        [intake] = [
            s
            for s in spans.get_finished_spans()
            if s.name == "jetledger.transaction.v1.TransactionService/CreateTransaction"
        ]
        trace_id = trace_of(intake)

        def in_trace() -> dict[str, ReadableSpan]:
            return {s.name: s for s in spans.get_finished_spans() if trace_of(s) == trace_id}

        async def complete() -> bool:
            return {"ledger apply", "notifications apply", "webhook deliver"} <= set(in_trace())

        await until(complete)
        found = in_trace()
        assert intake.kind == trace.SpanKind.SERVER and intake.parent is None
        for name in ("ledger apply", "notifications apply"):
            consumer = found[name]
            assert consumer.kind == trace.SpanKind.CONSUMER
            assert consumer.parent is not None and consumer.parent.span_id == intake.context.span_id
        delivery = found["webhook deliver"]
        assert delivery.kind == trace.SpanKind.CLIENT
        assert delivery.parent is not None and delivery.parent.span_id == intake.context.span_id
        # the receiver got the trace too (it may continue it)
        traced = [r for r in hook.received if r.headers.get("traceparent", "")]
        assert traced and all(
            r.headers["traceparent"].split("-")[1] == format(trace_id, "032x") for r in traced
        )
