"""The notification service as a real process: live watch, resume, SIGKILL, crash before ack, no PANs."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contracts.subjects import StreamNames
from jetledger.notification.v1 import notification_pb2 as pb
from jetledger.notification.v1 import notification_pb2_grpc as pb_grpc
from services.notification.signing import verify
from tests.e2e.notification.service import ServiceProcess
from tests.notifykit import (
    Events,
    WebhookReceiver,
    append,
    create_streams,
    fresh_database,
    nats_client,
)

pytestmark = pytest.mark.timeout(90)
SECRET = "e2e-secret-0123456789abcdef"
PAN = "4111111111111111"
# 13-19 digits, optionally grouped by spaces or dashes: the shape of a full card number. Rows and
# payloads hold nothing else that long; logs (DEBUG on) may hold other long numbers (object ids),
# so there we look for the card number the test used, in any grouping.
PAN_SHAPE = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
THE_PAN = re.compile("[ -]?".join(PAN))


async def _watch(
    stub: pb_grpc.NotificationServiceAsyncStub,
    out: asyncio.Queue[tuple[pb.Notification, float]],
    **request: Any,
) -> None:
    async for reply in stub.WatchNotifications(pb.WatchNotificationsRequest(**request)):
        await out.put((reply.notification, time.monotonic()))


async def _until(predicate: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_watch_is_live_and_resumes_from_a_cursor_without_gaps(
    nats_url: str, database_url: str, streams: StreamNames, tmp_path: Path
) -> None:
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        await create_streams(js, streams)
        service = ServiceProcess(nats_url, db, streams, tmp_path / "service.log").start()
        try:
            await service.serving()
            async with grpc.aio.insecure_channel(service.target) as channel:
                stub = pb_grpc.NotificationServiceStub(channel)
                got: asyncio.Queue[tuple[pb.Notification, float]] = asyncio.Queue()
                watcher = asyncio.create_task(_watch(stub, got, card_id="c1"))
                card = Events("c1")
                await append(js, streams, card.issue())
                # Bounded latency: event appended -> notification on the live stream.
                sent = time.monotonic()
                await append(js, streams, card.fund(10_000))
                first, arrived = await asyncio.wait_for(got.get(), 5.0)
                assert first.kind == pb.NOTIFICATION_KIND_FUNDING and arrived - sent < 2.0
                watcher.cancel()
                # Disconnected: more happens; reconnecting with the cursor resumes exactly after it.
                purchases = [card.purchase(100 * i, f"m-{i}") for i in range(1, 6)]
                await append(js, streams, *purchases, card.decline(99_999))
                watcher = asyncio.create_task(_watch(stub, got, card_id="c1", cursor=first.cursor))
                resumed = [(await asyncio.wait_for(got.get(), 5.0))[0] for _ in range(6)]
                watcher.cancel()
                assert [n.amount for n in resumed] == [100, 200, 300, 400, 500, 99_999]
                assert [n.kind for n in resumed][-1] == pb.NOTIFICATION_KIND_DECLINE
                # Keyset pages give the same notifications, in order, with no repeats.
                seen: list[str] = []
                token = ""
                while True:
                    page = await stub.ListNotifications(
                        pb.ListNotificationsRequest(card_id="c1", page_size=2, page_token=token)
                    )
                    seen += [n.notification_id for n in page.notifications]
                    token = page.next_page_token
                    if not token:
                        break
                assert seen == [first.notification_id, *(n.notification_id for n in resumed)]
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await stub.ListNotifications(pb.ListNotificationsRequest(page_token="%%%"))
                assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            service.stop()


async def test_sigkill_loses_no_delivery_and_repeats_keep_their_idempotency_key(
    nats_url: str, database_url: str, streams: StreamNames, tmp_path: Path
) -> None:
    # Slow receiver: a SIGKILL lands while POSTs are in flight (sent, not yet recorded).
    with WebhookReceiver(lambda _id, _n: (200, 0.2)).running() as hook:
        async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
            js = nc.jetstream()
            await create_streams(js, streams)
            service = ServiceProcess(nats_url, db, streams, tmp_path / "service.log").start(
                JETLEDGER_WEBHOOK_CONCURRENCY="4"
            )
            try:
                await service.serving()
                async with grpc.aio.insecure_channel(service.target) as channel:
                    stub = pb_grpc.NotificationServiceStub(channel)
                    reply = await stub.SetWebhookEndpoint(
                        pb.SetWebhookEndpointRequest(
                            command_id="w1",
                            card_id="c1",
                            endpoint_id="e1",
                            url=hook.url,
                            secret=SECRET,
                        )
                    )
                    assert reply.result.stream_sequence > 0
                card = Events("c1")
                await append(js, streams, card.issue(), card.fund(1_000_000))
                await append(js, streams, *(card.purchase(10 + i) for i in range(30)))

                async def some_received() -> bool:
                    return len(hook.ids()) >= 6

                await _until(some_received)
                service.kill()
                before = len(hook.received)
                service.start()
                await service.serving()

                async def all_delivered() -> bool:
                    async with await psycopg.AsyncConnection.connect(db) as conn:
                        cur = await conn.execute(
                            "SELECT count(*) FILTER (WHERE status = 'delivered'), count(*) FROM notify_ops.deliveries"
                        )
                        done, total = await cur.fetchone() or (0, 0)
                    return bool(total == 31 and done == total)

                await _until(all_delivered)
            finally:
                service.stop()
            async with await psycopg.AsyncConnection.connect(db) as conn:
                cur = await conn.execute("SELECT notification_id FROM notify.notifications")
                ids = {r[0] for r in await cur.fetchall()}
            assert len(ids) == 31 and hook.ids() == ids  # none lost
            assert len(hook.received) > before  # the restarted service carried on
            for notification_id in ids:
                attempts = hook.attempts(notification_id)
                assert {a.headers["idempotency-key"] for a in attempts} == {notification_id}
                assert len({a.body for a in attempts}) == 1
                assert all(verify(SECRET, a.headers, a.body) for a in attempts)


async def test_projector_killed_between_commit_and_ack_keeps_rows_exactly_once(
    nats_url: str, database_url: str, streams: StreamNames, tmp_path: Path
) -> None:
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        await create_streams(js, streams)
        card = Events("c1")
        seqs = await append(
            js,
            streams,
            card.issue(),
            card.fund(50_000),
            *(card.purchase(100 + i) for i in range(10)),
        )
        log = tmp_path / "service.log"
        service = ServiceProcess(
            nats_url, db, streams, log, {"JETLEDGER_NOTIFICATION_ACK_WAIT_SECONDS": "1"}
        )
        # The fault hook SIGKILLs the process after the first commit, before any ack.
        service.start(JETLEDGER_NOTIFICATION_FAULT="crash_after_commit")
        assert await service.exited() == -9
        async with await psycopg.AsyncConnection.connect(db) as conn:
            cur = await conn.execute("SELECT count(*) FROM notify.notifications")
            committed = (await cur.fetchone() or (0,))[0]
            cur = await conn.execute("SELECT last_sequence FROM notify.tracking")
            committed_messages = (await cur.fetchone() or (0,))[0]
        assert committed > 0 and committed_messages > 0
        service.start()  # resumes after the tracking row: the unacked batch is not applied twice
        try:
            await service.serving()

            async def caught_up() -> bool:
                async with await psycopg.AsyncConnection.connect(db) as conn:
                    cur = await conn.execute("SELECT last_sequence FROM notify.tracking")
                    row = await cur.fetchone()
                return bool(row and row[0] >= seqs[-1])

            await _until(caught_up)
            await asyncio.sleep(1.5)  # past the ack wait: nothing may come back twice
        finally:
            service.stop()
        async with await psycopg.AsyncConnection.connect(db) as conn:
            cur = await conn.execute(
                "SELECT kind, count(*) FROM notify.notifications GROUP BY kind ORDER BY kind"
            )
            assert await cur.fetchall() == [("funding", 1), ("purchase", 10)]
            cur = await conn.execute("SELECT last_sequence FROM notify.tracking")
            assert await cur.fetchone() == (seqs[-1],)


async def test_no_full_card_number_or_cvv_in_any_payload_row_or_log_line(
    nats_url: str, database_url: str, streams: StreamNames, tmp_path: Path
) -> None:
    with WebhookReceiver().running() as hook:
        async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
            js = nc.jetstream()
            await create_streams(js, streams)
            log = tmp_path / "service.log"
            service = ServiceProcess(nats_url, db, streams, log).start(JETLEDGER_LOG_LEVEL="DEBUG")
            try:
                await service.serving()
                async with grpc.aio.insecure_channel(service.target) as channel:
                    stub = pb_grpc.NotificationServiceStub(channel)
                    await stub.SetWebhookEndpoint(
                        pb.SetWebhookEndpointRequest(
                            command_id="w2",
                            card_id="c9",
                            endpoint_id="e1",
                            url=hook.url,
                            secret=SECRET,
                        )
                    )
                    card = Events("c9")
                    # A careless client put a card number in a merchant id and a description.
                    await append(
                        js,
                        streams,
                        card.issue(last4="1111"),
                        card.fund(5_000),
                        card.purchase(
                            4_900,
                            merchant=PAN,
                            description=f"card {PAN[:4]} {PAN[4:8]} {PAN[8:12]} {PAN[12:]} cvv 123",
                        ),
                        card.decline(9_000, merchant=PAN),
                    )

                    async def delivered() -> bool:
                        return len(hook.ids()) >= 4  # funding, purchase, low balance, decline

                    await _until(delivered)
                    listed = await stub.ListNotifications(pb.ListNotificationsRequest(card_id="c9"))
                    prefs = await stub.GetPreferences(pb.GetPreferencesRequest(card_id="c9"))
            finally:
                service.stop()
            async with await psycopg.AsyncConnection.connect(db) as conn:
                texts = []
                for query in [
                    "SELECT body::text FROM notify.notifications",
                    "SELECT convert_from(body, 'UTF8') FROM notify_ops.deliveries",
                    "SELECT state::text FROM notify.cards",
                ]:
                    cur = await conn.execute(query)
                    texts += [r[0] for r in await cur.fetchall()]
            texts += [r.body.decode() for r in hook.received]
            texts += [str(listed)]
            assert len(listed.notifications) == 4
            for text in texts:
                assert PAN_SHAPE.search(text) is None, text
                assert "cvv" not in text.lower(), text
            logged = log.read_text()
            assert logged.count("webhook delivered") == 4
            assert THE_PAN.search(logged) is None
            assert "cvv" not in logged.lower()
            # Secrets are write-only: never logged, never returned.
            assert SECRET not in log.read_text() and SECRET not in str(prefs)
            assert prefs.preferences.webhooks[0].secret_fingerprint


async def test_a_poison_event_stops_the_projector_loudly(
    nats_url: str, database_url: str, streams: StreamNames, tmp_path: Path
) -> None:
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        await create_streams(js, streams)
        log = tmp_path / "service.log"
        service = ServiceProcess(nats_url, db, streams, log).start()
        try:
            await service.serving()
            async with grpc.aio.insecure_channel(service.target) as channel:
                stub = pb_grpc.NotificationServiceStub(channel)
                card = Events("c1")
                seqs = await append(js, streams, card.issue(), card.fund(1_000))
                await stub.ListNotifications(
                    pb.ListNotificationsRequest(min_stream_sequence=seqs[-1])
                )
                await js.publish(streams.subjects.card("c1"), b'{"type":"x"}')
                await append(js, streams, card.purchase(10))

                async def stopped() -> bool:
                    return service.metric("jetledger_projection_poison_events_total") >= 1

                await _until(stopped)
                health: Any = health_pb2_grpc.HealthStub(channel)
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
                # Reads still work; nothing after the poison message was applied or skipped.
                listed = await stub.ListNotifications(pb.ListNotificationsRequest(card_id="c1"))
                assert [n.kind for n in listed.notifications] == [pb.NOTIFICATION_KIND_FUNDING]
            assert "projection stopped on a poison message" in log.read_text()
        finally:
            service.stop()
        assert service.proc is not None and service.proc.returncode == 0  # graceful SIGTERM


async def test_read_your_writes_at_a_command_marker_position(
    nats_url: str, database_url: str, streams: StreamNames, tmp_path: Path
) -> None:
    """A command answers with its marker's position, which this projection never reads."""
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        js = nc.jetstream()
        await create_streams(js, streams)
        service = ServiceProcess(nats_url, db, streams, tmp_path / "service.log").start()
        try:
            await service.serving()
            card = Events("c-ryw")
            await append(js, streams, card.issue(), card.fund(5_000))
            marker = await js.publish(streams.subjects.command_marker("fund-1"), b"{}")
            async with grpc.aio.insecure_channel(service.target) as channel:
                stub = pb_grpc.NotificationServiceStub(channel)
                started = time.monotonic()
                page = await stub.ListNotifications(
                    pb.ListNotificationsRequest(card_id="c-ryw", min_stream_sequence=marker.seq),
                    timeout=8,
                )
                assert time.monotonic() - started < 5.0, "waited for a position nobody will fill"
                assert [n.kind for n in page.notifications] == [pb.NOTIFICATION_KIND_FUNDING]
                with pytest.raises(grpc.aio.AioRpcError) as beyond:
                    await stub.ListNotifications(
                        pb.ListNotificationsRequest(min_stream_sequence=marker.seq + 100), timeout=8
                    )
                assert beyond.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            service.stop()
