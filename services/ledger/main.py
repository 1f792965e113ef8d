"""Composition root of the ledger service: ``python -m services.ledger.main``.

Reads ``Settings`` from the environment, checks that the ledger schema is migrated (``jetledger
migrate`` did it; nothing is created here), then runs until SIGTERM/SIGINT: the gRPC ``LedgerService`` (health, reflection,
metrics on its own registry) and the projector, which stands by until it holds the projection's
lease. A poison event turns health NOT_SERVING (the process stays up: no crash loop). Shutdown:
NOT_SERVING, drain RPCs, let the projector finish its batch, close Postgres and NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from contracts.errors import InvalidArgument
from jetledger.ledger.v1 import ledger_pb2_grpc
from projections.ledger.metrics import LedgerMetrics
from projections.ledger.projection import LedgerProjection
from projections.metrics import ProjectionMetrics
from projections.runner import ProjectionRunner, RunnerConfig
from services.ledger.servicer import SERVICE_NAME, LedgerServicer
from services.preflight import require_ledger_schema
from services.runtime import (
    GrpcService,
    run_service,
    start_grpc,
    until_shutdown,
    wait_for_shutdown_signal,
)
from services.security.config import server_security
from services.settings import Settings
from services.wiring import connect_store

POOL_TIMEOUT_SECONDS = 5.0

log = logging.getLogger("jetledger.ledger")


async def serve(
    settings: Settings, *, until: Callable[[], Coroutine[Any, Any, None]] = wait_for_shutdown_signal
) -> None:
    """Run the ledger service until a shutdown signal (or ``until`` returns: tests)."""
    if not settings.nats_url or not settings.database_url:
        raise InvalidArgument("set JETLEDGER_NATS_URL and JETLEDGER_DATABASE_URL")
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        await require_ledger_schema(conn)  # `jetledger migrate` made it: nothing created here
    # The streams must exist (`jetledger provision` made them): checked, never created.
    nats = await connect_store(settings, "ledger")
    store = nats.store
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=8,
        # a read waits this long for a connection, then answers UNAVAILABLE (Postgres away)
        timeout=POOL_TIMEOUT_SECONDS,
        # No server-side prepared statements: a rebuild swaps the schema under them.
        kwargs={"autocommit": True, "prepare_threshold": None},
        open=False,
    )
    await pool.open(wait=True)
    metrics = LedgerMetrics()
    projection_metrics = ProjectionMetrics(metrics.registry)
    servicer = LedgerServicer(pool, store, settings.ledger_max_wait_seconds)
    runtime = await start_grpc(
        [GrpcService(SERVICE_NAME, ledger_pb2_grpc.add_LedgerServiceServicer_to_server, servicer)],
        settings.host,
        settings.ledger_port,
        metrics_port=settings.ledger_metrics_port,
        registry=metrics.registry,
        security=server_security(settings),
        health_port=settings.health_port,
    )
    background: set[asyncio.Task[Any]] = set()

    def not_serving(_: object = None) -> None:
        task = asyncio.get_running_loop().create_task(runtime.set_serving(False))
        background.add(task)
        task.add_done_callback(background.discard)

    runner = ProjectionRunner(
        LedgerProjection(settings.database_url, store, metrics),
        store,
        settings.database_url,
        projection_metrics,
        RunnerConfig(
            batch=settings.ledger_batch,
            max_batch=settings.ledger_max_batch,
            ack_wait_seconds=settings.ledger_ack_wait_seconds,
            holder=f"{socket.gethostname()}:{os.getpid()}",
            fault=settings.ledger_fault,
        ),
        on_halt=not_serving,
    )
    stop = asyncio.Event()
    runner_task = asyncio.create_task(runner.run(stop), name="ledger-projection")

    async def stop_runner() -> None:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner_task, 30)

    runtime.on_close(nats.close)
    runtime.on_close(pool.close)
    runtime.on_close(stop_runner)  # closers run in reverse: projection, then pool, then NATS

    def on_runner_done(task: asyncio.Task[None]) -> None:
        # An unexpected error stops projecting but not serving reads: report it, do not crash-loop.
        if not task.cancelled() and task.exception() is not None:
            log.error("projection failed; reporting NOT_SERVING", exc_info=task.exception())
            projection_metrics.stopped.labels(runner.projection.name).set(1)
            not_serving()

    runner_task.add_done_callback(on_runner_done)
    await until()
    log.info("shutting down")
    await runtime.stop(grace=5.0)


def main() -> None:
    """Entry point: serve until SIGTERM/SIGINT; the process is gone 15 s after it at the latest."""
    run_service("ledger", lambda settings: serve(settings, until=until_shutdown("ledger")))


if __name__ == "__main__":
    main()
