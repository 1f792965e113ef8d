"""Composition root of the transaction service (command intake): ``python -m services.transaction.main``."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import CollectorRegistry

from jetledger.transaction.v1 import transaction_pb2, transaction_pb2_grpc
from services.commandindex import host_command_index
from services.intake import CommandHandler, IntakeMetrics
from services.runtime import GrpcService, Runtime, run_until_signal, start_grpc
from services.security.config import aio_channel, server_security
from services.settings import Settings
from services.transaction.cardlookup import CardLookup
from services.transaction.servicer import TransactionServicer
from services.transaction.sweeper import HoldSweeper
from services.wiring import connect_store

SERVICE_NAME = transaction_pb2.DESCRIPTOR.services_by_name["TransactionService"].full_name


async def start(
    settings: Settings,
    *,
    port: int | None = None,
    metrics: bool = True,
    sweep_interval: float = 1.0,
) -> Runtime:
    """Build the intake's adapters and start serving; the caller owns shutdown."""
    built = await connect_store(settings, "transaction", writer=True)
    assert built.writer is not None
    registry = CollectorRegistry()
    index = None
    if settings.database_url:
        index = await host_command_index(
            settings.database_url, built.store, settings.streams, registry
        )
    handler = CommandHandler(
        built.store,
        built.writer,
        settings.streams,
        hold_ttl=timedelta(seconds=settings.hold_ttl_seconds),
        metrics=IntakeMetrics(registry),
        index=None if index is None else index.reader,
        state_budget_bytes=settings.card_state_budget_mb * 1024 * 1024,
    )
    cards = CardLookup(
        settings.card_target,
        timeout=settings.card_lookup_timeout_seconds,
        ttl=settings.card_lookup_ttl_seconds,
        max_stale=settings.card_lookup_max_stale_seconds,
        registry=registry,
        channel=aio_channel(settings, settings.card_target),
    )
    sweeper = HoldSweeper(built.store, handler, settings.streams.subjects, interval=sweep_interval)
    runtime = await start_grpc(
        [
            GrpcService(
                SERVICE_NAME,
                transaction_pb2_grpc.add_TransactionServiceServicer_to_server,
                TransactionServicer(handler, cards),
            )
        ],
        settings.host,
        settings.transaction_port if port is None else port,
        metrics_port=settings.transaction_metrics_port if metrics else None,
        registry=registry,
        security=server_security(settings),
        health_port=settings.health_port,
        options=[("grpc.so_reuseport", 1)] if settings.transaction_reuse_port else (),
    )
    sweeper.start()
    runtime.on_close(built.close)
    if index is not None:
        runtime.on_close(index.close)
    runtime.on_close(cards.close)
    runtime.on_close(sweeper.stop)
    return runtime


def main() -> None:
    """Run the transaction service with settings from the environment."""
    run_until_signal("transaction", start)


if __name__ == "__main__":
    main()
