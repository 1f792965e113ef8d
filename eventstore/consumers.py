"""JetStream pull consumers on the lean connection: create, delete, and pull with checks.

``Puller`` keeps at most two pull requests outstanding on one consumer (so the next batch is on
its way while the caller works on this one) and checks every delivery as it arrives:

- **contiguity**: each delivery's consumer sequence must follow the previous one and be a first
  delivery. A lost delivery (a dropped pull after a reconnect, a message another client pulled)
  shows up as a jump, a redelivery as ``delivered > 1``, and an idle heartbeat whose
  ``Nats-Last-Consumer`` is ahead of what arrived as a loss too. Any of them marks the puller
  *broken*: the reader re-anchors after the last message it handed out. Nothing is ever skipped.
- **liveness**: pulls ask for idle heartbeats; silence for three heartbeat periods, a deleted
  consumer, a server shutting down or a lost connection also mark it broken.

Delivery metadata comes from the ack reply subject (``$JS.ACK.<stream>.<consumer>.<delivered>.
<stream seq>.<consumer seq>.<time ns>.<pending>``, or the 12-token form with a domain), so no
header is parsed on the read path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import time
from typing import Final

from eventstore.errors import StoreError, StoreUnavailable, from_api_error
from eventstore.model import StoredMessage
from eventstore.wire import WireConnection, header_value, status_description, status_of

API: Final = "$JS.API"
ACK_PREFIX: Final = b"$JS.ACK."
ERR_CONSUMER_NOT_FOUND: Final = 10014
HEARTBEAT_MISSES: Final = 3  # silent heartbeat periods before a pull is declared stalled

# (message, ack reply subject, pending after it): what a puller hands over per delivery.
Delivered = tuple[StoredMessage, bytes, int]


class Broken(StoreUnavailable):
    """The consumer cannot be trusted to continue: re-anchor it (a gap, a stall, a loss)."""


async def api_request(
    conn: WireConnection, subject: str, body: dict[str, object]
) -> dict[str, object]:
    """Send one JetStream API request; raise the translated error of an error answer."""
    reply = await conn.request(f"{API}.{subject}", json.dumps(body).encode())
    try:
        answer = json.loads(reply.data or b"{}")
    except ValueError as exc:
        raise StoreError(f"not a JetStream API answer: {reply.data[:200]!r}") from exc
    error = answer.get("error")
    if isinstance(error, dict):
        raise from_api_error(
            error.get("code"), error.get("err_code"), str(error.get("description", ""))
        )
    assert isinstance(answer, dict)
    return answer


def ordered_config(start_sequence: int, filters: list[str]) -> dict[str, object]:
    """An ephemeral, ack-less, memory-backed consumer from ``start_sequence`` (for replays)."""
    config: dict[str, object] = {
        "deliver_policy": "by_start_sequence",
        "opt_start_seq": max(1, start_sequence),
        "ack_policy": "none",
        "replay_policy": "instant",
        "max_deliver": 1,
        "mem_storage": True,
        "num_replicas": 1,
        "inactive_threshold": 30_000_000_000,  # ns: the server drops it 30 s after a dead client
    }
    _set_filters(config, filters)
    return config


def durable_config(
    name: str,
    start_sequence: int,
    filters: list[str],
    ack_wait_seconds: float,
    max_ack_pending: int,
) -> dict[str, object]:
    """A durable consumer acked with AckAll (ack the batch's last message after the commit)."""
    config: dict[str, object] = {
        "durable_name": name,
        "name": name,
        "deliver_policy": "by_start_sequence",
        "opt_start_seq": max(1, start_sequence),
        "ack_policy": "all",
        "ack_wait": int(ack_wait_seconds * 1e9),
        "max_ack_pending": max_ack_pending,
        "max_deliver": -1,
        "replay_policy": "instant",
    }
    _set_filters(config, filters)
    return config


def _set_filters(config: dict[str, object], filters: list[str]) -> None:
    if len(filters) == 1:
        config["filter_subject"] = filters[0]
    elif filters:
        config["filter_subjects"] = filters


async def create_consumer(
    conn: WireConnection, stream: str, config: dict[str, object]
) -> tuple[str, int]:
    """Create a consumer; return its name and how many messages it has to deliver."""
    name = config.get("name")
    subject = f"CONSUMER.CREATE.{stream}" + (f".{name}" if name else "")
    answer = await api_request(conn, subject, {"stream_name": stream, "config": config})
    pending = answer.get("num_pending", 0)
    return str(answer.get("name", name or "")), int(pending) if isinstance(pending, int) else 0


async def delete_consumer(conn: WireConnection, stream: str, name: str) -> bool:
    """Delete a consumer; return False if there was none."""
    try:
        await api_request(conn, f"CONSUMER.DELETE.{stream}.{name}", {})
    except StoreError as exc:
        if exc.err_code == ERR_CONSUMER_NOT_FOUND:
            return False
        raise
    return True


class _Pull:
    __slots__ = ("inbox", "remaining", "sid")

    def __init__(self, inbox: str, remaining: int) -> None:
        self.inbox = inbox
        self.remaining = remaining
        self.sid = 0


class Puller:
    """Pulls one consumer's deliveries into a bounded buffer, checking each as it arrives."""

    def __init__(
        self,
        conn: WireConnection,
        stream: str,
        consumer: str,
        *,
        batch: int,
        heartbeat_seconds: float = 1.0,
        expires_seconds: float = 10.0,
    ) -> None:
        self._conn = conn
        self._stream = stream
        self._next_subject = f"{API}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._batch = batch
        self._heartbeat = heartbeat_seconds
        self._expires = max(expires_seconds, 2 * heartbeat_seconds)
        self._pulls: list[_Pull] = []
        self.ready: collections.deque[Delivered] = collections.deque()
        self._next_consumer_seq = 1
        self._last_activity = time.monotonic()
        self._wake = asyncio.Event()
        self.broken: Broken | None = None
        self._forget = conn.on_lost(self._on_lost)
        self._closed = False

    def close(self) -> None:
        """Stop pulling (pending pulls expire on the server)."""
        self._closed = True
        self._forget()
        for pull in self._pulls:
            if not self._conn.closed:
                self._conn.unsubscribe(pull.sid)
        self._pulls.clear()

    def _on_lost(self) -> None:
        self._break(self._conn.error or Broken("reader connection lost"))

    def _break(self, error: StoreUnavailable) -> None:
        if self.broken is None:
            self.broken = error if isinstance(error, Broken) else Broken(str(error))
        self._wake.set()

    # -- pulling ----------------------------------------------------------------------------------

    def top_up(self) -> None:
        """Keep two pulls outstanding while the buffer has room (bounded memory)."""
        if self._closed or self.broken is not None:
            return
        while len(self._pulls) < 2 and len(self.ready) < self._batch:
            pull = _Pull(self._conn.new_inbox(), self._batch)
            pull.sid = self._conn.subscribe(pull.inbox, functools.partial(self._on, pull))
            request = {
                "batch": self._batch,
                "expires": int(self._expires * 1e9),
                "idle_heartbeat": int(self._heartbeat * 1e9),
            }
            self._conn.publish(self._next_subject, json.dumps(request).encode(), pull.inbox)
            if not self._pulls:
                self._last_activity = time.monotonic()  # silence is measured from the request
            self._pulls.append(pull)

    def _finish(self, pull: _Pull) -> None:
        if pull in self._pulls:
            self._pulls.remove(pull)
            self._conn.unsubscribe(pull.sid)

    def _on(self, pull: _Pull, subject: bytes, reply: bytes, headers: bytes, data: bytes) -> None:
        if not reply.startswith(ACK_PREFIX):
            self._on_status(pull, headers)
            return
        if self.broken is not None:
            return  # after a gap nothing more is taken from this consumer
        tokens = reply.split(b".")
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>
        # or, with a domain and an account hash, the same five fields two tokens later.
        i = 4 if len(tokens) == 9 else 6
        if len(tokens) != 9 and len(tokens) < 11:
            self._break(Broken(f"not a JetStream delivery: {reply[:80]!r}"))
            return
        consumer_seq = int(tokens[i + 2])
        if consumer_seq != self._next_consumer_seq or tokens[i] != b"1":
            self._break(
                Broken(
                    f"gap in {self._stream}: expected delivery {self._next_consumer_seq},"
                    f" got {consumer_seq} (delivered {tokens[i].decode()} times)"
                )
            )
            return
        self._next_consumer_seq = consumer_seq + 1
        # The MSG line's subject is the stored message's subject (not the pull's inbox).
        message = StoredMessage(
            self._stream, int(tokens[i + 1]), subject.decode(), data, None, None, headers,
            int(tokens[i + 3]),
        )  # fmt: skip
        self.ready.append((message, reply, int(tokens[i + 4])))
        pull.remaining -= 1
        if pull.remaining <= 0:
            self._finish(pull)
        self._wake.set()

    def _on_status(self, pull: _Pull, headers: bytes) -> None:
        self._last_activity = time.monotonic()
        code = status_of(headers)
        if code == 100:
            last = header_value(headers, b"Nats-Last-Consumer")
            if last is not None and last.isdigit() and int(last) >= self._next_consumer_seq:
                self._break(Broken(f"{self._stream}: deliveries up to {int(last)} never arrived"))
            return
        if code in (404, 408):  # the pull ended (expired, or nothing to deliver right now)
            self._finish(pull)
            self._wake.set()
            return
        description = status_description(headers)
        if code == 409 and description in ("Exceeded MaxWaiting", "Leadership Change"):
            self._finish(pull)
            self._wake.set()
            return
        self._break(Broken(f"{self._stream}: consumer answered {code} {description}"))

    # -- taking -----------------------------------------------------------------------------------

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until something is buffered, the puller broke, or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while not self.ready and self.broken is None:
            self.top_up()
            now = time.monotonic()
            self._last_activity = max(self._last_activity, self._conn.last_data)
            if now - self._last_activity > HEARTBEAT_MISSES * self._heartbeat and self._pulls:
                self._break(
                    Broken(
                        f"{self._stream}: no delivery or heartbeat for {now - self._last_activity:.1f}s"
                    )
                )
                break
            if now >= deadline:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(deadline - now, self._heartbeat))
