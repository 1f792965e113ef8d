"""The notification service's JetStream adapter, on nats-py: durable consumer, replay, atomic append.

Writes and provisioning go through the shared ``eventstore``; this module keeps the reading side
the projector needs, which ``eventstore.DurableConsumer`` does not give (same shapes otherwise):

- ``DurableConsumer.fetch`` asks for *one* message with a long wait and then drains what else is
  available with a very short one: nats-py's ``fetch(n)`` otherwise waits out its whole timeout for
  the n-th message when fewer are pending, which would add the timeout to every notification's
  latency at low load.
- ``DurableConsumer.create`` re-anchors the consumer just after the caller's tracking position.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

WRONG_LAST_SEQUENCE: Final = 10071  # a failed expected-last-subject-sequence check
DRAIN_TIMEOUT: Final = 0.002  # seconds to wait for more messages once one has arrived


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as stored in a stream."""

    stream: str
    sequence: int
    subject: str
    data: bytes
    time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message handed out by a durable consumer, to be acked after its effects commit."""

    message: StoredMessage
    num_delivered: int
    _msg: Msg

    async def ack(self) -> None:
        """Acknowledge: the consumer will not deliver it again."""
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        """Ask for redelivery (after ``delay`` seconds)."""
        await self._msg.nak(delay)


def _stored(msg: Msg) -> StoredMessage:
    meta = msg.metadata
    return StoredMessage(
        stream=meta.stream,
        sequence=meta.sequence.stream,
        subject=msg.subject,
        data=msg.data,
        time=meta.timestamp,
    )


class DurableConsumer:
    """A durable pull consumer on one stream with one or more subject filters."""

    def __init__(self, sub: JetStreamContext.PullSubscription, stream: str) -> None:
        self._sub = sub
        self.stream = stream

    @classmethod
    async def create(
        cls,
        js: JetStreamContext,
        stream: str,
        durable: str,
        filter_subjects: Sequence[str],
        *,
        ack_wait: float = 30.0,
        max_deliver: int = -1,
        start_after: int = 0,
    ) -> DurableConsumer:
        """(Re-)create the durable consumer so it delivers from ``start_after + 1``; bind to it.

        The caller passes its tracking row's position: re-anchoring on every takeover drops what a
        crashed predecessor left unacked, so an old batch can never come back *after* newer ones
        were applied (which the tracking row would then wrongly skip as a duplicate).
        """
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(stream, durable)
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_after + 1,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            filter_subjects=list(filter_subjects),
            max_ack_pending=10_000,
        )
        await js.add_consumer(stream, config)
        sub = await js.pull_subscribe_bind(durable, stream=stream)
        return cls(sub, stream)

    async def fetch(self, batch: int, max_wait: float) -> list[Delivery]:
        """Wait up to ``max_wait`` s for a message, then return it with up to ``batch - 1`` more."""
        try:
            msgs = await self._sub.fetch(1, timeout=max_wait)
        except TimeoutError:
            return []
        # The message says how many more match: drain only if there are some (saves a round trip
        # and the drain's wait on every message at low load).
        if batch > 1 and msgs[0].metadata.num_pending > 0:
            with contextlib.suppress(TimeoutError):
                msgs += await self._sub.fetch(batch - 1, timeout=DRAIN_TIMEOUT)
        return [Delivery(_stored(m), m.metadata.num_delivered, m) for m in msgs]

    async def close(self) -> None:
        """Stop receiving (the durable consumer and its position stay on the server)."""
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()


async def replay(
    js: JetStreamContext,
    stream: str,
    filter_subjects: Sequence[str],
    *,
    from_sequence: int = 1,
    batch: int = 1000,
) -> AsyncIterator[list[StoredMessage]]:
    """Yield the stream's matching messages from ``from_sequence`` up to its last one now."""
    info = await js.stream_info(stream)
    last = info.state.last_seq
    if info.state.messages == 0 or from_sequence > last:
        return
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(1, from_sequence),
        filter_subjects=list(filter_subjects),
        inactive_threshold=60.0,
    )
    sub = await js.pull_subscribe("", stream=stream, config=config)
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except TimeoutError:
                return  # nothing (more) matches the filters
            stored = [_stored(m) for m in msgs]
            within = [m for m in stored if m.sequence <= last]
            if within:
                yield within
            if len(within) < len(stored) or msgs[-1].metadata.num_pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
