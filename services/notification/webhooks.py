"""Signed webhook delivery, at-least-once, with every bit of delivery state in Postgres.

A delivery row is queued by the projector in the same transaction as its notification. The
dispatcher claims due rows (``FOR UPDATE SKIP LOCKED``, so replicas share the work) and, in the same
statement, counts the attempt and pushes ``next_attempt_at`` out by a lease: if the process dies
mid-POST, the row becomes due again when the lease ends and is re-sent with the same idempotency
key (the notification id). A 2xx marks it delivered; anything else (5xx, timeout, refused) schedules
another attempt with exponential backoff and jitter, until the last attempt dead-letters it.

Outcomes are recorded in batches (one UPDATE for all that finished meanwhile): a row whose outcome
is not recorded yet is still leased, so a crash in between only means one more attempt with the
same key, never a lost one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import psycopg
from opentelemetry import trace
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from contracts.errors import InvalidArgument
from eventstore import tracing
from eventstore.headers import TRACEPARENT
from eventstore.integrity import Keyring
from projections.notifications.schema import check_schema, ops_schema
from services.notification.metrics import NotificationMetrics
from services.notification.signing import (
    HEADER_ATTEMPT,
    HEADER_ID,
    HEADER_IDEMPOTENCY_KEY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    backoff,
    sign,
)
from services.notification.wakeup import Waker
from services.security import secretbox
from services.security.secretbox import SecretUnreadable
from services.security.webhookpolicy import WebhookUrlPolicy

log = logging.getLogger("jetledger.notification.webhooks")


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Retry policy and limits of webhook delivery."""

    max_attempts: int = 8
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    timeout: float = 5.0
    concurrency: int = 16

    @property
    def lease(self) -> float:
        """How long a claimed delivery is hidden from other claims (a POST's worst case, twice)."""
        return 2 * self.timeout + 1.0


@dataclass(frozen=True, slots=True)
class _Claimed:
    delivery_id: int
    notification_id: str
    scope: str
    endpoint_id: str
    body: bytes
    attempts: int
    url: str | None
    secret: str | None
    traceparent: str = ""


class _CommandOf(msgspec.Struct):
    command_id: str = ""


def _command_id(body: bytes) -> str:
    """The command a notification's body names (its log lines carry it), or ``""``."""
    try:
        return msgspec.json.decode(body, type=_CommandOf).command_id
    except msgspec.DecodeError:
        return ""


class WebhookDispatcher:
    """Claims due deliveries and POSTs them, at most ``concurrency`` at a time."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        schema: str,
        config: WebhookConfig,
        metrics: NotificationMetrics,
        waker: Waker,
        client: aiohttp.ClientSession,
        *,
        url_policy: WebhookUrlPolicy | None = None,
        secret_keys: Keyring | None = None,
    ) -> None:
        """``client`` should resolve through the policy (``guarded_connector_kwargs``): that is
        what refuses a host name that resolves inward at delivery; literal addresses, and the
        sealed secrets (``secret_keys``), are checked here."""
        self.pool = pool
        self.url_policy = WebhookUrlPolicy() if url_policy is None else url_policy
        self.secret_keys = secret_keys
        self.config = config
        self.metrics = metrics
        self.waker = waker
        self.client = client
        s, o = sql.Identifier(check_schema(schema)), sql.Identifier(ops_schema(schema))
        self._claim_sql = sql.SQL(
            "WITH due AS (SELECT delivery_id FROM {o}.deliveries"
            "  WHERE status = 'pending' AND next_attempt_at <= now()"
            "  ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED),"
            " claimed AS (UPDATE {o}.deliveries d SET attempts = d.attempts + 1,"
            "  next_attempt_at = now() + make_interval(secs => %s)"
            "  FROM due WHERE d.delivery_id = due.delivery_id"
            "  RETURNING d.delivery_id, d.notification_id, d.scope, d.endpoint_id, d.body,"
            "  d.attempts, d.traceparent)"
            " SELECT c.delivery_id, c.notification_id, c.scope, c.endpoint_id, c.body, c.attempts,"
            "  e.url, e.secret, c.traceparent FROM claimed c LEFT JOIN {s}.webhook_endpoints e"
            "  ON e.card_id = c.scope AND e.endpoint_id = c.endpoint_id"
        ).format(s=s, o=o)
        self._next_due_sql = sql.SQL(
            "SELECT extract(epoch FROM min(next_attempt_at) - now())::float8"
            " FROM {o}.deliveries WHERE status = 'pending'"
        ).format(o=o)
        self._done_sql = sql.SQL(
            "UPDATE {o}.deliveries d SET status = u.status, last_http_status = u.http,"
            " last_error = u.error,"
            " delivered_at = CASE WHEN u.status = 'delivered' THEN now() END"
            " FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[])"
            "  AS u(id, status, http, error) WHERE d.delivery_id = u.id"
            " RETURNING u.status, extract(epoch FROM now() - d.created_at)::float8"
        ).format(o=o)
        self._outcomes: list[tuple[int, str, int, str]] = []
        self._recording: asyncio.Task[None] | None = None
        self._retry_sql = sql.SQL(
            "UPDATE {o}.deliveries SET last_http_status = %s, last_error = %s,"
            " next_attempt_at = now() + make_interval(secs => %s) WHERE delivery_id = %s"
        ).format(o=o)
        self._inflight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Deliver forever; a Postgres outage pauses delivery, it does not end it."""
        while True:
            try:
                await self._loop()
            except psycopg.Error as exc:
                log.warning("webhook dispatcher waiting for Postgres", extra={"error": str(exc)})
                await asyncio.sleep(1.0)

    async def _loop(self) -> None:
        """Claim and send: wake on new deliveries, sleep until the next one is due."""
        while True:
            since = self.waker.generation
            free = self.config.concurrency - len(self._inflight)
            # Claim in chunks (a quarter of the slots at least): one claim statement serves many.
            if free < max(1, self.config.concurrency // 4):
                await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
                continue
            claimed = await self._claim(free)
            for item in claimed:
                task = asyncio.create_task(self._deliver(item))
                self._inflight.add(task)
                task.add_done_callback(self._done)
            if len(claimed) == free:
                continue  # there may be more due: claim again as soon as a slot is free
            # Retries poke the waker when they schedule, so only an idle loop asks Postgres when
            # the next attempt is due.
            await self.waker.wait(since, 1.0 if claimed else await self._idle_wait())

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Its row stays leased and comes back when the lease ends: logged, not lost.
            log.error("webhook delivery crashed", extra={"error": repr(task.exception())})

    async def _idle_wait(self) -> float:
        async with self.pool.connection() as conn:
            cur = await conn.execute(self._next_due_sql)
            row = await cur.fetchone()
        due_in = None if row is None else row[0]
        return 1.0 if due_in is None else min(1.0, max(0.0, due_in))

    async def _claim(self, limit: int) -> list[_Claimed]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(self._claim_sql, (limit, self.config.lease))
            return [_Claimed(*row) for row in await cur.fetchall()]

    async def _deliver(self, item: _Claimed) -> None:
        parent = tracing.context_from({TRACEPARENT: item.traceparent}) if item.traceparent else None
        if parent is None or not tracing.enabled():
            await self._attempt(item)
            return
        with tracing.tracer().start_as_current_span(
            "webhook deliver",
            context=parent,
            kind=trace.SpanKind.CLIENT,
            attributes={
                "jetledger.notification_id": item.notification_id,
                "jetledger.endpoint_id": item.endpoint_id,
                "jetledger.attempt": item.attempts,
            },
        ):
            await self._attempt(item)

    async def _attempt(self, item: _Claimed) -> None:
        if item.url is None or item.secret is None:
            await self._finish(item, "cancelled", 0, "endpoint removed")
            return
        try:
            # The allow-list may have shrunk since registration; a literal address never
            # reaches the resolver, so it is checked here.
            self.url_policy.check_url(item.url)
            secret = self._open(item.scope, item.endpoint_id, item.secret)
        except (InvalidArgument, SecretUnreadable) as exc:
            # Will never succeed: dead-letter at once, with the reason (never the secret).
            await self._finish(item, "dead", 0, str(exc)[:300])
            self.metrics.dead_letters.inc()
            log.error(
                "webhook refused",
                extra={"endpoint_id": item.endpoint_id, "scope": item.scope, "error": str(exc)},
            )
            return
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            HEADER_ID: item.notification_id,
            HEADER_IDEMPOTENCY_KEY: item.notification_id,
            HEADER_TIMESTAMP: str(stamp),
            HEADER_SIGNATURE: sign(secret, item.notification_id, stamp, item.body),
            HEADER_ATTEMPT: str(item.attempts),
            **tracing.trace_headers(),  # the receiver may continue the trace (unsigned)
        }
        status, error = 0, ""
        try:
            async with self.client.post(
                item.url,
                data=item.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                await response.read()  # drain, so the keep-alive connection can be reused
            if not 200 <= status < 300:
                error = f"HTTP {status}"
                trace.get_current_span().set_status(trace.Status(trace.StatusCode.ERROR, error))
        except Exception as exc:  # any failure to get a 2xx is a failed attempt, counted
            # a refusal by the guarded resolver is the connect error's cause: say why
            cause = getattr(exc, "os_error", None) or exc
            error = f"{type(exc).__name__}: {cause}"[:300]
        fields = {
            "command_id": _command_id(item.body),
            "notification_id": item.notification_id,
            "endpoint_id": item.endpoint_id,
            "attempt": item.attempts,
            "http_status": status,
        }
        if not error:
            await self._finish(item, "delivered", status, "")
            log.info("webhook delivered", extra=fields)
        elif item.attempts >= self.config.max_attempts:
            await self._finish(item, "dead", status, error)
            self.metrics.dead_letters.inc()
            log.error("webhook dead-lettered", extra={**fields, "error": error})
        else:
            delay = backoff(item.attempts, self.config.backoff_base, self.config.backoff_max)
            async with self.pool.connection() as conn:
                await conn.execute(self._retry_sql, (status, error, delay, item.delivery_id))
            self.waker.poke()  # the run loop recomputes its sleep from the new next_attempt_at
            self.metrics.deliveries.labels("failed").inc()
            self.metrics.retries.inc()
            log.warning("webhook failed", extra={**fields, "error": error, "retry_in": delay})

    def _open(self, scope: str, endpoint_id: str, stored: str) -> str:
        """The endpoint's signing secret, unsealed (a plaintext one from before sealing as is)."""
        if not secretbox.is_sealed(stored):
            return stored
        if self.secret_keys is None:
            raise SecretUnreadable("the secret is sealed and JETLEDGER_SECRET_KEYS_FILE is not set")
        context = secretbox.endpoint_context(scope, endpoint_id)  # scope "" = the operator's
        return secretbox.open_sealed(self.secret_keys, stored, context)

    async def _finish(self, item: _Claimed, status: str, http_status: int, error: str) -> None:
        """Queue the outcome for the next batched UPDATE (the row stays leased until then)."""
        self._outcomes.append((item.delivery_id, status, http_status, error))
        if self._recording is None or self._recording.done():
            self._recording = asyncio.create_task(self._record())

    async def _record(self) -> None:
        """Record every queued outcome, one UPDATE per round, until none is left."""
        while self._outcomes:
            outcomes, self._outcomes = self._outcomes, []
            columns = [list(column) for column in zip(*outcomes, strict=True)]
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(self._done_sql, columns)
                    rows = await cur.fetchall()
            except psycopg.Error as exc:
                # Not recorded: the rows come back when their lease ends (same key, once more).
                log.warning("webhook outcomes not recorded", extra={"error": str(exc)})
                return
            for status, age in rows:
                self.metrics.deliveries.labels(status).inc()
                if status == "delivered" and age is not None:
                    self.metrics.delivery_latency.observe(max(0.0, float(age)))

    async def close(self) -> None:
        """Let in-flight POSTs finish and their outcomes be recorded (a cut-off one is re-sent)."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self.config.timeout)
        if self._recording is not None:
            await asyncio.wait({self._recording}, timeout=self.config.timeout)
