"""Composition root of the notification service: ``python -m services.notification.main``.

Reads ``Settings`` from the environment, builds the adapters (NATS, a Postgres pool, an HTTP
client) and runs four things until SIGTERM/SIGINT: the projection (on the shared runner; leader
only), the webhook dispatcher, the LISTEN/NOTIFY wake-up listener and the gRPC server (health,
reflection, metrics). A poison message or a dead loop turns health NOT_SERVING; reads go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import psycopg
from psycopg_pool import AsyncConnectionPool

from contracts.errors import InvalidArgument
from projections.metrics import ProjectionMetrics
from projections.notifications.projection import NotificationProjection
from projections.notifications.schema import wake_channel
from projections.runner import ProjectionRunner, RunnerConfig
from services.notification.effects import CommittedEffects
from services.notification.grpc_api import SERVICE_NAME, NotificationServicer, add_to_server
from services.notification.metrics import NotificationMetrics
from services.notification.preferences import PreferenceCommands
from services.notification.wakeup import Waker
from services.notification.webhooks import WebhookConfig, WebhookDispatcher
from services.preflight import require_notification_schema
from services.runtime import (
    GrpcService,
    run_service,
    start_grpc,
    until_shutdown,
    wait_for_shutdown_signal,
)
from services.security.config import secret_keyring, server_security, webhook_policy
from services.security.webhookpolicy import guarded_connector_kwargs
from services.settings import Settings
from services.wiring import connect_store

POOL_TIMEOUT_SECONDS = 5.0

log = logging.getLogger("jetledger.notification")


def webhook_config(settings: Settings) -> WebhookConfig:
    """The webhook retry policy from the settings."""
    return WebhookConfig(
        max_attempts=settings.webhook_max_attempts,
        backoff_base=settings.webhook_backoff_base_seconds,
        backoff_max=settings.webhook_backoff_max_seconds,
        timeout=settings.webhook_timeout_seconds,
        concurrency=settings.webhook_concurrency,
    )


async def serve(
    settings: Settings, *, until: Callable[[], Coroutine[Any, Any, None]] = wait_for_shutdown_signal
) -> None:
    """Run the notification service until a shutdown signal (or ``until`` returns: tests)."""
    if not settings.nats_url or not settings.database_url:
        raise InvalidArgument("set JETLEDGER_NATS_URL and JETLEDGER_DATABASE_URL")
    schema = settings.notification_schema
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        await require_notification_schema(conn, schema)  # made by `jetledger migrate`
    # The streams must exist (`jetledger provision` made them, notify.> subjects included).
    nats = await connect_store(settings, "notification")
    store = nats.store
    # The pool reads, and writes only webhook delivery state, where a commit lost in a Postgres
    # crash just means one more attempt with the same idempotency key (at-least-once holds): so
    # no fsync wait before a POST. The projector's own connection keeps synchronous commits, as
    # it acks the stream after them.
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url,
        min_size=2,
        max_size=settings.webhook_concurrency + 8,
        # a read waits this long for a connection, then answers UNAVAILABLE (Postgres away)
        timeout=POOL_TIMEOUT_SECONDS,
        kwargs={
            "autocommit": True,
            "prepare_threshold": None,
            "options": "-c synchronous_commit=off",
        },
        open=False,
    )
    await pool.open(wait=True)
    metrics, waker = NotificationMetrics(), Waker()
    url_policy, secret_keys = webhook_policy(settings), secret_keyring(settings)
    commands = PreferenceCommands(store, url_policy=url_policy, secret_keys=secret_keys)
    servicer = NotificationServicer(pool, schema, settings.stream, commands, waker, metrics)
    runtime = await start_grpc(
        [GrpcService(SERVICE_NAME, add_to_server, servicer)],
        settings.host,
        settings.notification_port,
        metrics_port=settings.notification_metrics_port,
        registry=metrics.registry,
        security=server_security(settings),
        health_port=settings.health_port,
    )
    # Every host name is resolved through the URL policy: a name that resolves inward is refused
    # at the address actually connected to (DNS rebinding gains nothing).
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64, **guarded_connector_kwargs(url_policy))
    )
    dispatcher = WebhookDispatcher(
        pool,
        schema,
        webhook_config(settings),
        metrics,
        waker,
        client,
        url_policy=url_policy,
        secret_keys=secret_keys,
    )
    runner = ProjectionRunner(
        NotificationProjection(schema, settings.streams, CommittedEffects(metrics, waker)),
        store,
        settings.database_url,
        ProjectionMetrics(metrics.registry),
        RunnerConfig(
            batch=settings.notification_batch,
            max_batch=settings.notification_max_batch,
            ack_wait_seconds=settings.notification_ack_wait_seconds,
            holder=f"{socket.gethostname()}:{os.getpid()}",
            fault=settings.notification_fault,
        ),
        on_halt=lambda _: halted.set(),
    )
    halted = asyncio.Event()
    stop_runner = asyncio.Event()
    tasks = {
        asyncio.create_task(runner.run(stop_runner), name="projection"),
        asyncio.create_task(dispatcher.run(), name="webhooks"),
        asyncio.create_task(waker.listen(settings.database_url, wake_channel(schema)), name="wake"),
        # a poison message keeps the runner (and its lease) waiting: this reports it
        asyncio.create_task(halted.wait(), name="projection halted"),
    }
    stop = asyncio.create_task(until(), name="signal")
    try:
        pending = {stop, *tasks}
        while stop in pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stop}:
                error = None if task.cancelled() else task.exception()
                # A poison message or a dead loop: stay up for reads, but stop reporting healthy.
                log.error("%s stopped", task.get_name(), extra={"error": repr(error)})
                await runtime.set_serving(False)
    finally:
        log.info("shutting down")
        await runtime.stop(grace=2.0)
        stop_runner.set()
        for task in tasks:
            if task.get_name() != "webhooks":
                task.cancel()
        await dispatcher.close()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        await pool.close()
        with contextlib.suppress(Exception):
            await nats.close()


def main() -> None:
    """Entry point: serve until SIGTERM/SIGINT; the process is gone 15 s after it at the latest."""
    run_service(
        "notification", lambda settings: serve(settings, until=until_shutdown("notification"))
    )


if __name__ == "__main__":
    main()
