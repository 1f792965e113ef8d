"""Test support for the notification service: streams, fresh databases, events, a webhook receiver.

The webhook receiver is a real HTTP server on 127.0.0.1 (stdlib ``ThreadingHTTPServer``) whose
answers a test scripts per notification id: a status code, or a delay longer than the client's
timeout. Every request it receives is recorded with its headers, body and arrival time.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import nats
import psycopg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.histories import Events as Events  # re-exported for the tests
from contracts.codec import encode
from contracts.events import (
    Event,
)
from contracts.subjects import StreamNames
from eventstore import EventStore, derived_stream_config, source_stream_config
from projections.metrics import ProjectionMetrics
from projections.notifications.projection import NotificationProjection
from projections.runner import ProjectionRunner, RunnerConfig
from services.notification.effects import CommittedEffects
from services.notification.metrics import NotificationMetrics
from services.notification.wakeup import Waker


async def create_streams(js: JetStreamContext, streams: StreamNames) -> None:
    """Create the test's source and derived streams exactly as the event store provisions them."""
    for config in (source_stream_config(streams), derived_stream_config(streams)):
        await js.add_stream(config)


@contextlib.asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[NATS]:
    """A connected NATS client, closed on exit."""
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """Create a database with a random name; yield its URL; drop it afterwards."""
    name = "nt_" + uuid.uuid4().hex[:12]
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)  # type: ignore[arg-type]
    finally:
        async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def append(js: JetStreamContext, streams: StreamNames, *events: Event) -> list[int]:
    """Append card events to their subjects; return their sequences."""
    seqs = []
    for e in events:
        ack = await js.publish(streams.subjects.card(e.card_id), encode(e), stream=streams.source)
        seqs.append(int(ack.seq))
    return seqs


@dataclass
class Received:
    """One request the webhook receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def notification_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class WebhookReceiver:
    """A real local HTTP server; ``script(notification_id, attempt) -> (status, delay seconds)``."""

    script: Callable[[str, int], tuple[int, float]] = lambda _id, _n: (200, 0.0)
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def attempts(self, notification_id: str) -> list[Received]:
        """Every request received for one notification, in arrival order."""
        with self._lock:
            return [r for r in self.received if r.notification_id == notification_id]

    def ids(self) -> set[str]:
        """The notification ids received at least once."""
        with self._lock:
            return {r.notification_id for r in self.received}

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length", "0"))
        body = handler.rfile.read(length)
        got = Received(
            handler.path, {k.lower(): v for k, v in handler.headers.items()}, body, time.monotonic()
        )
        with self._lock:
            self.received.append(got)
            attempt = sum(1 for r in self.received if r.notification_id == got.notification_id)
        status, delay = self.script(got.notification_id, attempt)
        if delay:
            time.sleep(delay)
        with contextlib.suppress(OSError):
            handler.send_response(status)
            handler.send_header("content-length", "0")
            handler.end_headers()

    @contextlib.contextmanager
    def running(self) -> Iterator[WebhookReceiver]:
        """Serve on a free loopback port until the block ends."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def notification_runner(
    store: EventStore,
    db: str,
    *,
    schema: str = "notify",
    metrics: NotificationMetrics | None = None,
    waker: Waker | None = None,
    batch: int = 256,
    linger: float = 0.0,
) -> ProjectionRunner:
    """A runner of the notification projection wired as the service wires it."""
    metrics = metrics or NotificationMetrics()
    projection = NotificationProjection(
        schema, store.names, CommittedEffects(metrics, waker or Waker())
    )
    return ProjectionRunner(
        projection,
        store,
        db,
        ProjectionMetrics(metrics.registry),
        RunnerConfig(batch=batch, linger_seconds=linger),
    )
