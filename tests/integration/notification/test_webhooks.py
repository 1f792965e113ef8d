"""Signed webhook delivery against a real local HTTP server: signatures, retries, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from contracts.errors import AlreadyExists
from contracts.subjects import StreamNames
from eventstore import EventStore
from eventstore.integrity import Keyring
from projections.notifications.schema import create_schemas, wake_channel
from services.notification.metrics import NotificationMetrics
from services.notification.preferences import PreferenceCommands
from services.notification.signing import verify
from services.notification.wakeup import Waker
from services.notification.webhooks import WebhookConfig, WebhookDispatcher
from services.security.webhookpolicy import WebhookUrlPolicy
from tests.notifykit import (
    Events,
    WebhookReceiver,
    append,
    create_streams,
    fresh_database,
    nats_client,
    notification_runner,
)

pytestmark = pytest.mark.timeout(60)
SECRET = "s3cret-for-tests-0123456789"
# The receivers listen on loopback: an operator allow-list lets webhooks reach them.
LOCAL = WebhookUrlPolicy.from_setting("127.0.0.0/8,::1/128")
SECRET_KEYS = Keyring("s1", {"s1": os.urandom(32)})


def commands_on(store: EventStore) -> PreferenceCommands:
    """Preference commands as the service builds them: URL policy, sealed secrets."""
    return PreferenceCommands(store, url_policy=LOCAL, secret_keys=SECRET_KEYS)


@contextlib.asynccontextmanager
async def service(
    store: EventStore, db: str, config: WebhookConfig
) -> AsyncIterator[tuple[AsyncConnectionPool[Any], NotificationMetrics]]:
    """The projector, the dispatcher and the wake-up listener, in this process."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    async with pool.connection() as conn:
        await create_schemas(conn, "notify")
    metrics, waker = NotificationMetrics(), Waker()
    runner = notification_runner(store, db, metrics=metrics, waker=waker)
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as client:
        dispatcher = WebhookDispatcher(
            pool,
            "notify",
            config,
            metrics,
            waker,
            client,
            url_policy=LOCAL,
            secret_keys=SECRET_KEYS,
        )
        tasks = [
            asyncio.create_task(runner.run(stop)),
            asyncio.create_task(dispatcher.run()),
            asyncio.create_task(waker.listen(db, wake_channel("notify"))),
        ]
        try:
            yield pool, metrics
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pool.close()


async def _deliveries(
    pool: AsyncConnectionPool[Any], until: str, count: int
) -> list[tuple[Any, ...]]:
    """Wait until ``count`` deliveries have status ``until``; return all delivery rows."""
    deadline = time.monotonic() + 30
    while True:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT notification_id, endpoint_id, status, attempts, last_http_status"
                " FROM notify_ops.deliveries ORDER BY delivery_id"
            )
            rows: list[tuple[Any, ...]] = await cur.fetchall()
        if sum(1 for r in rows if r[2] == until) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


async def test_signed_delivery_retries_after_500_and_timeout_with_one_idempotency_key(
    nats_url: str, database_url: str, streams: StreamNames
) -> None:
    # attempt 1: HTTP 500; attempt 2: slower than the client's timeout; attempt 3: 200.
    def script(_id: str, attempt: int) -> tuple[int, float]:
        return {1: (500, 0.0), 2: (200, 1.0)}.get(attempt, (200, 0.0))

    config = WebhookConfig(max_attempts=5, backoff_base=0.2, backoff_max=1.0, timeout=0.4)
    with WebhookReceiver(script).running() as hook:
        async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
            js = nc.jetstream()
            await create_streams(js, streams)
            commands = commands_on(EventStore(nc, streams))
            await commands.set_webhook("wh-1", "c1", "e1", hook.url, SECRET)
            card = Events("c1")
            await append(js, streams, card.issue(), card.fund(10_000))
            async with service(EventStore(nc, streams), db, config) as (pool, metrics):
                rows = await _deliveries(pool, "delivered", 1)
            assert [(r[2], r[3]) for r in rows] == [("delivered", 3)]
            attempts = hook.attempts(rows[0][0])
            assert len(attempts) == 3
            # Same key and body on every attempt; each attempt signed over its own timestamp.
            assert {a.headers["idempotency-key"] for a in attempts} == {rows[0][0]}
            assert len({a.body for a in attempts}) == 1
            assert all(verify(SECRET, a.headers, a.body) for a in attempts)
            assert not verify("another-secret-0123456789", attempts[0].headers, attempts[0].body)
            assert attempts[0].json()["kind"] == "funding"
            # Backoff: at least half the exponential delay (0.2 s, then 0.4 s) between attempts.
            assert attempts[1].at - attempts[0].at >= 0.1
            assert attempts[2].at - attempts[1].at >= 0.2 + config.timeout
            assert metrics.retries._value.get() == 2


async def test_dead_letter_after_max_attempts(
    nats_url: str, database_url: str, streams: StreamNames
) -> None:
    config = WebhookConfig(max_attempts=3, backoff_base=0.05, backoff_max=0.1, timeout=1.0)
    with WebhookReceiver(lambda _id, _n: (503, 0.0)).running() as hook:
        async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
            js = nc.jetstream()
            await create_streams(js, streams)
            await commands_on(EventStore(nc, streams)).set_webhook(
                "wh-2", "c1", "e1", hook.url, SECRET
            )
            card = Events("c1")
            await append(js, streams, card.issue(), card.fund(10_000))
            async with service(EventStore(nc, streams), db, config) as (pool, metrics):
                rows = await _deliveries(pool, "dead", 1)
                await asyncio.sleep(0.3)  # nothing more is sent once dead
            assert [(r[2], r[3], r[4]) for r in rows] == [("dead", 3, 503)]
            assert len(hook.attempts(rows[0][0])) == 3
            assert metrics.dead_letters._value.get() == 1


async def test_preferences_route_kinds_and_operator_endpoints(
    nats_url: str, database_url: str, streams: StreamNames
) -> None:
    config = WebhookConfig(backoff_base=0.05, timeout=1.0)
    with WebhookReceiver().running() as card_hook, WebhookReceiver().running() as ops_hook:
        async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
            js = nc.jetstream()
            await create_streams(js, streams)
            commands = commands_on(EventStore(nc, streams))
            await commands.set_webhook("wh-3", "c1", "e1", card_hook.url, SECRET)
            await commands.set_webhook("wh-4", "", "ops", ops_hook.url, SECRET)
            first = await commands.set_preferences("p-1", "c1", ("decline",), None, None)
            # Idempotent forever: the same request replays, another one with that id is refused.
            again = await commands.set_preferences("p-1", "c1", ("decline",), None, None)
            assert (again.stream_sequence, again.replayed) == (first.stream_sequence, True)
            with pytest.raises(AlreadyExists):
                await commands.set_preferences("p-1", "c1", ("purchase",), None, None)
            card, other = Events("c1"), Events("c2")
            await append(js, streams, card.issue(), card.fund(5_000), card.decline(90_000))
            await append(js, streams, other.issue(), other.fund(700))
            async with service(EventStore(nc, streams), db, config) as (pool, _):
                rows = await _deliveries(pool, "delivered", 4)
            assert (
                sorted((r[1], r[2]) for r in rows)
                == [("e1", "delivered")] + [("ops", "delivered")] * 3
            )
            assert [r.json()["kind"] for r in card_hook.received] == ["decline"]
            kinds = sorted(r.json()["kind"] for r in ops_hook.received)
            assert kinds == ["decline", "funding", "funding"]
            async with await psycopg.AsyncConnection.connect(db) as conn:
                cur = await conn.execute("SELECT count(*) FROM notify.webhook_endpoints")
                assert await cur.fetchone() == (2,)
