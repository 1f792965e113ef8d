"""The ledger's reading side of JetStream: the projector's durable pull consumer and ordered replay.

Written on nats-py directly because the projector needs two things a generic event-store API does
not give: (1) the durable consumer is re-created from the *tracking row's* position whenever a new
leader takes over, so the Postgres position, not the consumer's ack state, decides where consuming
resumes (an unacked batch of a crashed leader can never be skipped or reordered); (2) "is anything
that matches ``card.>`` stored in (a, b]?" — the read-your-writes check, answered with one
``next_by_subj`` message-get.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api


@dataclass(frozen=True, slots=True)
class Received:
    """One stored message as the ledger sees it: position, subject, payload, store time."""

    stream: str
    sequence: int
    subject: str
    data: bytes
    time: datetime
    num_pending: int  # messages matching the filter still to come after this one
    num_delivered: int
    msg: Msg | None = None  # the NATS message to ack (None for replayed ones)


def received(msg: Msg) -> Received:
    """Wrap a JetStream message with its metadata."""
    meta = msg.metadata
    return Received(
        stream=meta.stream,
        sequence=meta.sequence.stream,
        subject=msg.subject,
        data=msg.data,
        time=meta.timestamp,
        num_pending=meta.num_pending,
        num_delivered=meta.num_delivered,
        msg=msg,
    )


class DurableConsumer:
    """A durable pull consumer on one stream whose start position comes from the tracking row."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        name: str,
        filter_subject: str,
        ack_wait: float,
    ) -> None:
        self._js = js
        self._stream = stream
        self._name = name
        self._filter = filter_subject
        self._ack_wait = ack_wait
        self._nc = js._nc  # raw pulls: nats-py's fetch awaits each message with a timer
        self._sub: Subscription | None = None
        self._inbox = ""
        self._got: list[Msg] = []
        self._want = 0
        self._done = asyncio.Event()

    async def start_after(self, sequence: int) -> None:
        """(Re-)create the consumer so its first delivery is the first message after ``sequence``.

        Only the leader calls this, right after taking the lease: deleting the old consumer drops
        whatever a crashed leader left unacked, and the tracking row says where to resume.
        """
        await self.close()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._js.delete_consumer(self._stream, self._name)
        config = api.ConsumerConfig(
            durable_name=self._name,
            filter_subject=self._filter,
            ack_policy=api.AckPolicy.ALL,  # acking the batch's last message acks the batch
            ack_wait=self._ack_wait,
            max_ack_pending=-1,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=sequence + 1,
        )
        await self._js.add_consumer(self._stream, config=config)
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self._got.append(msg)
            if len(self._got) < self._want:
                return
        elif status == "100":  # idle heartbeat / flow control: not an answer
            return
        self._done.set()

    async def fetch(self, batch: int, wait_seconds: float) -> list[Received]:
        """Return up to ``batch`` messages: wait up to ``wait_seconds`` for the first one, then
        take whatever else is already there (``no_wait`` + ``expires``: one request, no linger)."""
        if self._sub is None:
            raise RuntimeError("consumer not started")
        self._got, self._want = [], batch
        self._done.clear()
        request = {"batch": batch, "expires": int(wait_seconds * 1e9), "no_wait": True}
        await self._nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self._name}",
            json.dumps(request).encode(),
            reply=self._inbox,
        )
        # The server always ends the request (messages, then a 404/408 status) before expiry.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), wait_seconds + 2.0)
        got, self._got = self._got, []
        return [received(m) for m in got]

    async def close(self) -> None:
        """Stop pulling (the durable consumer stays on the server)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


async def ack_batch(highest: Received) -> None:
    """Acknowledge a committed batch: with AckAll, acking its highest message acks all below."""
    if highest.msg is not None:
        await highest.msg.ack()


async def next_matching_sequence(
    js: JetStreamContext, stream: str, subject_filter: str, after: int
) -> int | None:
    """Return the sequence of the first message matching ``subject_filter`` after ``after``."""
    try:
        msg = await js.get_msg(stream, seq=after + 1, subject=subject_filter, next=True)
    except nats.js.errors.NotFoundError:
        return None
    return None if msg.seq is None else int(msg.seq)


async def last_sequence(js: JetStreamContext, stream: str) -> int:
    """Return the stream's last sequence (0 when empty)."""
    info = await js.stream_info(stream)
    return int(info.state.last_seq)


async def replay(
    js: JetStreamContext,
    stream: str,
    subject_filter: str,
    *,
    after: int = 0,
    until: int | None = None,
    idle_timeout: float = 5.0,
) -> AsyncIterator[Received]:
    """Yield messages matching ``subject_filter`` in stream order from ``after + 1``.

    Uses an ordered consumer (ephemeral, flow-controlled, gap-detecting). Stops after the last
    message at or below ``until`` (default: the stream's last sequence when the replay starts),
    so a replay of a live stream ends.
    """
    end = await last_sequence(js, stream) if until is None else until
    if end <= after:
        return
    first = await next_matching_sequence(js, stream, subject_filter, after)
    if first is None or first > end:
        return
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=first,
    )
    sub = await js.subscribe(
        subject_filter,
        stream=stream,
        ordered_consumer=True,
        config=config,
        idle_heartbeat=1.0,
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_timeout)
            except nats.errors.TimeoutError:
                raise ReplayStalled(f"no message from {stream} within {idle_timeout}s") from None
            item = received(msg)
            if item.sequence > end:
                return
            yield item
            if item.sequence == end or item.num_pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


class ReplayStalled(RuntimeError):
    """The ordered consumer stopped delivering before the replay reached its end."""


async def sleep_or(event: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; return True early when ``event`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()
