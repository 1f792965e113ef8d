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
import uuid
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
    delivery: int = 0  # the consumer's delivery sequence (contiguous for an ordered reader)
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
        delivery=meta.sequence.consumer,
        msg=msg,
    )


class PullConsumer:
    """Raw pull requests on one consumer (nats-py's fetch awaits every message with a timer)."""

    def __init__(self, js: JetStreamContext, stream: str) -> None:
        self._js = js
        self._nc = js._nc
        self._stream = stream
        self.name = ""
        self._sub: Subscription | None = None
        self._inbox = ""
        self._got: list[Msg] = []
        self._want = 0
        self._done = asyncio.Event()

    async def create(self, config: api.ConsumerConfig) -> None:
        """Create the consumer (replacing our subscription) and start listening for pulls."""
        await self.close()
        info = await self._js.add_consumer(self._stream, config=config)
        self.name = info.name
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
            f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self.name}",
            json.dumps(request).encode(),
            reply=self._inbox,
        )
        # The server always ends the request (messages, then a 404/408 status) before expiry.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), wait_seconds + 2.0)
        got, self._got = self._got, []
        return [received(m) for m in got]

    async def close(self) -> None:
        """Stop listening (the consumer itself stays on the server)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def delete(self) -> None:
        """Stop listening and delete the consumer."""
        await self.close()
        if self.name:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self._stream, self.name)


class DurableConsumer(PullConsumer):
    """The projector's durable pull consumer; its start position comes from the tracking row."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        name: str,
        filter_subject: str,
        ack_wait: float,
    ) -> None:
        super().__init__(js, stream)
        self.name = name
        self._filter = filter_subject
        self._ack_wait = ack_wait

    async def start_after(self, sequence: int) -> None:
        """(Re-)create the consumer so its first delivery is the first message after ``sequence``.

        Only the leader calls this, right after taking the lease: deleting the old consumer drops
        whatever a crashed leader left unacked, and the tracking row says where to resume.
        """
        await self.close()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._js.delete_consumer(self._stream, self.name)
        await self.create(
            api.ConsumerConfig(
                durable_name=self.name,
                filter_subject=self._filter,
                ack_policy=api.AckPolicy.ALL,  # acking the batch's highest message acks the batch
                ack_wait=self._ack_wait,
                max_ack_pending=-1,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=sequence + 1,
            )
        )


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
    batch: int = 1_000,
    idle_timeout: float = 5.0,
) -> AsyncIterator[Received]:
    """Yield messages matching ``subject_filter`` in stream order from ``after + 1``.

    An ordered consumer, pull-based as in the current NATS clients: an ephemeral, memory-backed,
    ack-less consumer read by one puller; every delivery's consumer sequence must follow the
    previous one, and on a gap the consumer is re-created after the last stream sequence seen
    (nats-py's push ordered consumer is flow-control bound at ~13k msg/s here). Stops after the
    last message at or below ``until`` (default: the stream's last sequence at the start), so a
    replay of a live stream ends. Memory: one pull batch.
    """
    end = await last_sequence(js, stream) if until is None else until
    if end <= after:
        return
    first = await next_matching_sequence(js, stream, subject_filter, after)
    if first is None or first > end:
        return
    reader = PullConsumer(js, stream)

    def config(start: int) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            name=f"ledger-replay-{uuid.uuid4().hex[:12]}",
            filter_subject=subject_filter,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=api.AckPolicy.NONE,
            max_deliver=1,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=60.0,
        )

    await reader.create(config(first))
    expected, last_seen = 1, first - 1
    try:
        while True:
            items = await reader.fetch(batch, idle_timeout)
            if not items:
                raise ReplayStalled(f"no message from {stream} within {idle_timeout}s")
            for item in items:
                if item.delivery != expected:
                    # A lost delivery: start again right after the last message we passed on.
                    await reader.delete()
                    await reader.create(config(last_seen + 1))
                    expected = 1
                    break
                expected += 1
                if item.sequence > end:
                    return
                last_seen = item.sequence
                yield item
                if item.sequence == end or item.num_pending == 0:
                    return
    finally:
        await reader.delete()


class ReplayStalled(RuntimeError):
    """The ordered consumer stopped delivering before the replay reached its end."""


async def sleep_or(event: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; return True early when ``event`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()
