"""Consumers: an ordered replay reader, and durable pull consumers for projections.

- ``ordered_replay`` reads with an ephemeral pull consumer (no acks, in memory) and checks that the
  consumer sequence has no gap; on a gap (a lost pull after a reconnect) it starts a new consumer
  right after the last message it yielded. It fetches a bounded batch at a time, so memory stays
  flat however long the stream is.
- ``DurableConsumer`` is a durable pull consumer with explicit acks and bounded redelivery: a
  projection fetches a batch, commits it with its tracking row, then acks (DESIGN §3.7).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Final

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ReplayPolicy
from nats.js.client import JetStreamContext
from nats.nuid import NUID

from eventstore.errors import StoreUnavailable, translate
from eventstore.model import StoredMessage

# An ordered reader's consumer outlives a dead client by this much, then the server drops it.
ORDERED_INACTIVE_THRESHOLD: Final = 30.0
FETCH_TIMEOUT: Final = 1.0
MAX_STALLS: Final = 3


def stored_from_consumer(msg: Msg) -> StoredMessage:
    """Build a ``StoredMessage`` from a message delivered by a consumer."""
    meta = msg.metadata
    return StoredMessage(
        stream=meta.stream,
        sequence=meta.sequence.stream,
        subject=msg.subject,
        data=msg.data,
        headers=dict(msg.headers or {}),
        time=meta.timestamp,
    )


async def ordered_replay(
    js: JetStreamContext,
    stream: str,
    from_sequence: int,
    filters: list[str],
    stop: int | None,
    batch: int,
) -> AsyncIterator[StoredMessage]:
    """Yield messages from ``from_sequence`` in stream order, up to ``stop`` (None: forever)."""
    if stop is not None and stop < from_sequence:
        return
    next_seq = max(from_sequence, 1)
    stalls = 0
    nuid = NUID()
    while True:
        name = nuid.next().decode()
        config = ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=next_seq,
            ack_policy=AckPolicy.NONE,
            replay_policy=ReplayPolicy.INSTANT,
            filter_subjects=filters or None,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=ORDERED_INACTIVE_THRESHOLD,
        )
        try:
            info = await js.add_consumer(stream, config)
            sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
        except Exception as exc:
            raise translate(exc) from exc
        try:
            if stop is not None and info.num_pending == 0:
                return
            expected = 1
            while True:
                try:
                    msgs = await sub.fetch(batch, timeout=FETCH_TIMEOUT)
                except TimeoutError:
                    if stop is None:
                        continue
                    break  # messages were pending but none came: start a new consumer
                except Exception as exc:
                    raise translate(exc) from exc
                gap = False
                for msg in msgs:
                    meta = msg.metadata
                    if meta.sequence.consumer != expected:
                        gap = True
                        break
                    expected += 1
                    seq = meta.sequence.stream
                    if stop is not None and seq > stop:
                        return
                    stalls = 0
                    yield stored_from_consumer(msg)
                    next_seq = seq + 1
                    if stop is not None and (seq >= stop or meta.num_pending == 0):
                        return
                if gap:
                    break
            stalls += 1
            if stalls > MAX_STALLS:
                raise StoreUnavailable(f"replay of {stream} stalled at sequence {next_seq}")
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await js.delete_consumer(stream, name)


class Delivery:
    """One message delivered by a durable consumer, with its acknowledgement handles."""

    __slots__ = ("_msg", "message", "num_delivered")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.message = stored_from_consumer(msg)
        self.num_delivered: int = msg.metadata.num_delivered

    async def ack(self) -> None:
        """Acknowledge: the message is processed and must not be redelivered."""
        try:
            await self._msg.ack()
        except Exception as exc:
            raise translate(exc) from exc

    async def nak(self, delay: timedelta | None = None) -> None:
        """Ask for redelivery (after ``delay``), counting towards ``max_deliver``."""
        try:
            await self._msg.nak(delay=None if delay is None else delay.total_seconds())
        except Exception as exc:
            raise translate(exc) from exc

    async def term(self) -> None:
        """Stop redelivering this message (a poison message the caller has reported)."""
        try:
            await self._msg.term()
        except Exception as exc:
            raise translate(exc) from exc

    async def in_progress(self) -> None:
        """Reset the ack timer: the message is still being worked on."""
        try:
            await self._msg.in_progress()
        except Exception as exc:
            raise translate(exc) from exc


class DurableConsumer:
    """A bound durable pull consumer: ``fetch`` batches, ack each delivery after committing it."""

    def __init__(
        self, js: JetStreamContext, stream: str, name: str, sub: JetStreamContext.PullSubscription
    ) -> None:
        self._js = js
        self.stream = stream
        self.name = name
        self._sub = sub

    # The timeout is the pull request's server-side expiry, not a client-side deadline.
    async def fetch(self, batch: int = 100, timeout: float = 1.0) -> list[Delivery]:  # noqa: ASYNC109
        """Return up to ``batch`` deliveries, waiting at most ``timeout`` s for the first one."""
        try:
            msgs = await self._sub.fetch(batch, timeout=timeout)
        except TimeoutError:  # nats-py raises its own or asyncio's, depending on where it waited
            return []
        except Exception as exc:
            raise translate(exc) from exc
        return [Delivery(msg) for msg in msgs]

    async def num_pending(self) -> int:
        """Return how many matching messages the consumer has not delivered yet."""
        try:
            info = await self._js.consumer_info(self.stream, self.name)
        except Exception as exc:
            raise translate(exc) from exc
        return info.num_pending or 0

    async def close(self) -> None:
        """Stop fetching; the durable consumer and its progress stay on the server."""
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()

    async def delete(self) -> None:
        """Delete the durable consumer and its progress from the server."""
        await self.close()
        try:
            await self._js.delete_consumer(self.stream, self.name)
        except Exception as exc:
            raise translate(exc) from exc


async def create_durable(
    js: JetStreamContext,
    stream: str,
    name: str,
    filter_subjects: list[str],
    *,
    ack_wait: timedelta,
    max_deliver: int,
    max_ack_pending: int,
    start_sequence: int,
) -> DurableConsumer:
    """Create or update a durable pull consumer and bind a subscription to it."""
    if not filter_subjects:
        raise ValueError("a durable consumer needs at least one filter subject")
    if max_deliver < 1:
        raise ValueError("max_deliver must be >= 1 (redelivery is bounded)")
    config = ConsumerConfig(
        name=name,
        durable_name=name,
        deliver_policy=DeliverPolicy.ALL
        if start_sequence <= 1
        else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=None if start_sequence <= 1 else start_sequence,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait.total_seconds(),
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
        filter_subjects=filter_subjects,
        replay_policy=ReplayPolicy.INSTANT,
    )
    try:
        await js.add_consumer(stream, config)
        sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    except Exception as exc:
        raise translate(exc) from exc
    return DurableConsumer(js, stream, name, sub)
