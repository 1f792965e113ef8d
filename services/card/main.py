"""Composition root of the card service: ``python -m services.card.main``."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import CollectorRegistry

from jetledger.card.v1 import card_pb2, card_pb2_grpc
from services.card.servicer import CardServicer
from services.intake import CommandHandler, IntakeMetrics
from services.runtime import GrpcService, Runtime, run_until_signal, start_grpc
from services.security.config import server_security
from services.settings import Settings
from services.wiring import connect_store

SERVICE_NAME = card_pb2.DESCRIPTOR.services_by_name["CardService"].full_name


async def start(settings: Settings, *, port: int | None = None, metrics: bool = True) -> Runtime:
    """Build the card service's adapters and start serving; the caller owns shutdown."""
    built = await connect_store(settings, "card", writer=True)
    assert built.writer is not None
    registry = CollectorRegistry()
    handler = CommandHandler(
        built.store,
        built.writer,
        settings.streams,
        hold_ttl=timedelta(seconds=settings.hold_ttl_seconds),
        max_retries=settings.max_conflict_retries,
        metrics=IntakeMetrics(registry),
    )
    servicer = CardServicer(handler, built.store, settings.streams, registry)
    runtime = await start_grpc(
        [GrpcService(SERVICE_NAME, card_pb2_grpc.add_CardServiceServicer_to_server, servicer)],
        settings.host,
        settings.card_port if port is None else port,
        metrics_port=settings.card_metrics_port if metrics else None,
        registry=registry,
        security=server_security(settings),
        health_port=settings.health_port,
    )
    runtime.on_close(built.close)
    return runtime


def main() -> None:
    """Run the card service with settings from the environment."""
    run_until_signal("card", start)


if __name__ == "__main__":
    main()
