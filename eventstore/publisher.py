"""Atomic batches published on a lean connection: one buffer of frames, the commit as a request.

``EventStore.append_batch`` publishes through nats-py, which spends ~10–20 µs of CPU per message
(header encoding, a coroutine per publish). A relay moving hundreds of messages per batch, such as
the ledger's outbox, pays that on every entry; ``BatchPublisher`` builds the ADR-50 frames itself
(the same headers, the same batch rules checked by ``check_batch``), writes them in one go and
awaits only the commit's ack. Errors are the event store's own (``eventstore.errors``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec
from nats.nuid import NUID

from eventstore import headers as h
from eventstore.batching import batch_positions, check_batch, expectations, message_headers
from eventstore.errors import InvalidBatch, StoreError, StoreUnavailable, from_api_error
from eventstore.integrity import Keyring, stamp
from eventstore.model import OutgoingMessage, Position
from eventstore.wire import WireConnection, WireOptions, hpub_frame


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int | None = None
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    count: int = 0
    error: _ApiError | None = None


_ack: Final = msgspec.json.Decoder(_PubAck)


class BatchPublisher:
    """Publishes atomic batches on a connection of its own; ``close`` when done."""

    def __init__(
        self, url: str | WireOptions, timeout: float = 10.0, keyring: Keyring | None = None
    ) -> None:
        self._url = url
        self._keyring = keyring
        self._timeout = timeout
        self._conn: WireConnection | None = None
        self._nuid = NUID()

    async def publish(self, msgs: Sequence[OutgoingMessage]) -> list[Position]:
        """Append ``msgs`` as one atomic batch: all are stored, or none (and this raises)."""
        if not msgs:
            raise InvalidBatch("an atomic batch needs at least one message")
        check_batch(msgs)
        msgs = stamp(msgs)
        if self._conn is None or self._conn.closed:
            self._conn = await WireConnection.open(self._url)
        batch_id = self._nuid.next().decode()
        frames = []
        for index, msg in enumerate(msgs[:-1], start=1):
            headers = message_headers(msg, self._keyring)
            headers[h.BATCH_ID] = batch_id
            headers[h.BATCH_SEQUENCE] = str(index)
            frames.append(hpub_frame(msg.subject, headers, msg.data))
        last = msgs[-1]
        headers = message_headers(last, self._keyring)
        headers[h.BATCH_ID] = batch_id
        headers[h.BATCH_SEQUENCE] = str(len(msgs))
        headers[h.BATCH_COMMIT] = h.BATCH_COMMIT_STORE
        self._conn.write(b"".join(frames))
        reply = await self._conn.request(last.subject, last.data, self._timeout, headers)
        try:
            ack = _ack.decode(reply.data)
        except msgspec.DecodeError as exc:
            raise StoreError(f"not a JetStream ack: {reply.data[:200]!r}") from exc
        if ack.error is not None:
            err = ack.error
            raise from_api_error(err.code, err.err_code, err.description, expectations(msgs))
        if not ack.stream or ack.seq <= 0:
            raise StoreUnavailable(f"JetStream ack without a position: {reply.data[:200]!r}")
        return batch_positions(ack.stream, ack.seq, ack.count, len(msgs))

    def close(self) -> None:
        """Close the connection (a batch in flight fails as ``StoreUnavailable``)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
