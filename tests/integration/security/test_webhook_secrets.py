"""Webhooks, wired: the URL policy at registration and at delivery, secrets sealed at rest, and
command ids masked in what is sent — with the real projector, dispatcher, NATS and Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from contracts.subjects import StreamNames
from eventstore import EventStore
from eventstore.integrity import Keyring
from projections.notifications.schema import create_schemas, wake_channel
from services.notification.metrics import NotificationMetrics
from services.notification.preferences import PreferenceCommands
from services.notification.signing import verify
from services.notification.wakeup import Waker
from services.notification.webhooks import WebhookConfig, WebhookDispatcher
from services.security.webhookpolicy import (
    WebhookUrlPolicy,
    WebhookUrlRefused,
    guarded_connector_kwargs,
)
from tests.notifykit import (
    Events,
    WebhookReceiver,
    append,
    create_streams,
    fresh_database,
    nats_client,
    notification_runner,
)

pytestmark = pytest.mark.timeout(90)
SECRET = "plain-secret-never-stored-0123456789"
LOCAL = WebhookUrlPolicy.from_setting("127.0.0.0/8,::1/128")
KEYS = Keyring("s1", {"s1": os.urandom(32)})
CONFIG = WebhookConfig(max_attempts=3, backoff_base=0.05, backoff_max=0.1, timeout=2.0)


@contextlib.asynccontextmanager
async def running(
    store: EventStore, db: str, policy: WebhookUrlPolicy
) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """Projector + dispatcher (its HTTP client resolving through ``policy``) in this process."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    async with pool.connection() as conn:
        await create_schemas(conn, "notify")
    metrics, waker = NotificationMetrics(), Waker()
    runner = notification_runner(store, db, metrics=metrics, waker=waker)
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(**guarded_connector_kwargs(policy))
    async with aiohttp.ClientSession(connector=connector) as client:
        dispatcher = WebhookDispatcher(
            pool, "notify", CONFIG, metrics, waker, client, url_policy=policy, secret_keys=KEYS
        )
        tasks = [
            asyncio.create_task(runner.run(stop)),
            asyncio.create_task(dispatcher.run()),
            asyncio.create_task(waker.listen(db, wake_channel("notify"))),
        ]
        try:
            yield pool
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pool.close()


async def settled(pool: AsyncConnectionPool[Any], count: int) -> list[tuple[Any, ...]]:
    """Wait until ``count`` deliveries are delivered or dead; return (endpoint, status, error)."""
    deadline = time.monotonic() + 60
    while True:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT endpoint_id, status, last_error FROM notify_ops.deliveries"
                " WHERE status IN ('delivered', 'dead') ORDER BY delivery_id"
            )
            rows: list[tuple[Any, ...]] = await cur.fetchall()
        if len(rows) >= count:
            return rows
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.05)


async def every_row_as_text(db: str) -> str:
    """Every row of every table of the notification schemas, as text."""
    async with await psycopg.AsyncConnection.connect(db) as conn:
        cur = await conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema IN ('notify', 'notify_ops')"
        )
        out = []
        for schema, table in await cur.fetchall():
            rows = await conn.execute(
                f'SELECT t::text FROM "{schema}"."{table}" t'  # noqa: S608 - catalogue names
            )
            out += [r[0] for r in await rows.fetchall()]
    return "\n".join(out)


async def every_message_as_text(store: EventStore) -> str:
    """Every message of the source stream, headers and payload, as text."""
    out = []
    async for message in store.replay():
        out.append(f"{message.subject} {dict(message.headers)} {message.data.decode()}")
    return "\n".join(out)


async def test_internal_webhook_urls_are_refused_at_registration(
    nats_url: str, streams: StreamNames
) -> None:
    async with nats_client(nats_url) as nc:
        await create_streams(nc.jetstream(), streams)
        store = EventStore(nc, streams)
        commands = PreferenceCommands(store, secret_keys=KEYS)  # no allow-list
        for url in (
            "http://169.254.169.254/latest/meta-data/",  # cloud metadata
            "http://localhost:8080/hook",  # loopback by name
            "http://10.0.0.7/hook",  # private
            "http://[::ffff:127.0.0.1]/hook",  # loopback, IPv4-mapped
            "http://user:pw@example.com/hook",  # credentials in the URL
        ):
            with pytest.raises(WebhookUrlRefused):
                await commands.set_webhook("w-1", "", "ops", url, SECRET)
        assert await store.last_sequence() == 0  # nothing was written


async def test_no_plaintext_secret_in_the_stream_tables_or_logs(
    nats_url: str, database_url: str, streams: StreamNames, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with WebhookReceiver().running() as card_hook, WebhookReceiver().running() as ops_hook:
        async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
            js = nc.jetstream()
            await create_streams(js, streams)
            store = EventStore(nc, streams)
            commands = PreferenceCommands(store, url_policy=LOCAL, secret_keys=KEYS)
            await commands.set_webhook("w-1", "c1", "e1", card_hook.url, SECRET)
            _, generated = await commands.set_webhook("w-2", "", "ops", ops_hook.url, "")
            assert generated.startswith("whsec_")
            card = Events("c1")
            # A command id holding a run of 16 digits (not Luhn-valid, so the intake took it).
            funded = msgspec.structs.replace(card.fund(5_000), command_id="fund-4000123412341235")
            await append(js, streams, card.issue(), funded)
            async with running(store, db, LOCAL) as pool:
                rows = await settled(pool, 2)
            assert [r[1] for r in rows] == ["delivered", "delivered"]
            (card_post,) = card_hook.received
            (ops_post,) = ops_hook.received
            # The dispatcher opened the sealed secrets: each receiver can check its signature.
            assert verify(SECRET, card_post.headers, card_post.body)
            assert verify(generated, ops_post.headers, ops_post.body)
            # The command id is masked in what is sent (and stored as the notification).
            body = card_post.json()
            assert body["command_id"] == "fund-****1235"
            assert "4000123412341235" not in card_post.body.decode()

            stream_text = await every_message_as_text(store)
            tables = await every_row_as_text(db)
            assert "v1.s1." in stream_text and "v1.s1." in tables  # sealed, with the key id
            for plain in (SECRET, generated):
                assert plain not in stream_text
                assert plain not in tables
                assert plain not in caplog.text
            assert "4000123412341235" not in tables


async def test_delivery_refuses_an_endpoint_that_is_internal_now(
    nats_url: str, database_url: str, streams: StreamNames
) -> None:
    with WebhookReceiver().running() as hook:
        async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
            js = nc.jetstream()
            await create_streams(js, streams)
            store = EventStore(nc, streams)
            # Allowed when registered; the operator then removed loopback from the allow-list.
            commands = PreferenceCommands(store, url_policy=LOCAL, secret_keys=KEYS)
            await commands.set_webhook("w-1", "c1", "e1", hook.url, SECRET)
            by_name = hook.url.replace("127.0.0.1", "localhost")
            await commands.set_webhook("w-2", "c1", "e2", by_name, SECRET)
            card = Events("c1")
            await append(js, streams, card.issue(), card.fund(5_000))
            async with running(store, db, WebhookUrlPolicy()) as pool:
                rows = await settled(pool, 2)
        assert {r[0]: r[1] for r in rows} == {"e1": "dead", "e2": "dead"}
        assert all("internal address" in r[2] for r in rows), rows
        assert hook.received == []  # neither the literal nor the name reached the receiver
