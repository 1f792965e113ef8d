"""``EventStore``: the JetStream adapter (provisioning, appends, reads, consumers).

Writes go to the source stream by subject; every position names the stream that acked it. Reads of
one aggregate use batched direct gets (ADR-31: one request, the server streams every matching
message and an end-of-batch status), which need no consumer and cost one round trip. Replays and
projections use consumers read on lean connections of their own (``eventstore.reader``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from nats.nuid import NUID

from contracts.subjects import StreamNames
from eventstore import headers as h
from eventstore.batching import (
    batch_positions,
    check_batch,
    expectations,
    message_headers,
)
from eventstore.errors import (
    ERR_STREAM_NAME_IN_USE,
    IncompatibleStream,
    InvalidBatch,
    StoreError,
    StoreUnavailable,
    TamperedEvent,
    from_api_error,
    translate,
)
from eventstore.integrity import Keyring, Verdict, check_stored, stamp
from eventstore.model import Loaded, OutgoingMessage, Position, StoredMessage
from eventstore.provisioning import (
    DEFAULT_DUPLICATE_WINDOW,
    derived_stream_config,
    snapshot_stream_config,
    source_stream_config,
)
from eventstore.publisher import BatchPublisher
from eventstore.reader import ReadBatch, Subscription, open_subscription, read_batches
from eventstore.wire import WireOptions
from eventstore.workers import read_batches_in_worker

DEFAULT_TIMEOUT: Final = 5.0
# While a request waits for its answer, the connection is checked this often: a request whose
# connection dropped fails as ``StoreUnavailable`` at once instead of waiting out its timeout.
LOST_CHECK_SECONDS: Final = 0.1
READ_BATCH: Final = 1000


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int | None = None
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    batch: str = ""
    count: int = 0
    error: _ApiError | None = None


class _StreamState(msgspec.Struct):
    last_seq: int = 0
    subjects: dict[str, int] | None = None


class _StreamInfo(msgspec.Struct):
    state: _StreamState = msgspec.field(default_factory=_StreamState)
    total: int = 0
    offset: int = 0
    limit: int = 0
    error: _ApiError | None = None


_ack_decoder: Final = msgspec.json.Decoder(_PubAck)
_info_decoder: Final = msgspec.json.Decoder(_StreamInfo)
_json: Final = msgspec.json.Encoder()


class _StoredSubject(msgspec.Struct):
    subject: str


class _MsgGetReply(msgspec.Struct):
    """The part of a ``STREAM.MSG.GET`` reply read here (an error reply has no ``message``)."""

    message: _StoredSubject | None = None


def parse_time(value: str) -> datetime:
    """Parse a server timestamp (RFC 3339, nanoseconds) into an aware UTC datetime."""
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        # older servers: "2022-08-06 00:29:27.587861324 +0000 UTC"
        date, clock, *_ = value.split(" ")
        whole, _, frac = clock.partition(".")
        return datetime.fromisoformat(f"{date}T{whole}.{(frac + '000000')[:6]}+00:00")


def stored_from_direct(msg: Msg) -> StoredMessage:
    """Build a ``StoredMessage`` from a direct-get reply."""
    headers = msg.headers or {}
    try:
        return StoredMessage(
            stream=headers[h.STREAM],
            sequence=int(headers[h.SEQUENCE]),
            subject=headers[h.SUBJECT],
            data=msg.data,
            headers={k: v for k, v in headers.items() if k not in h.DIRECT_GET_METADATA},
            time=parse_time(headers[h.TIME_STAMP]),
        )
    except (KeyError, ValueError) as exc:
        raise StoreError(f"malformed direct-get reply: {exc!r} in {headers!r}") from exc


class EventStore:
    """The JetStream event store of one deployment (or one test): its streams and subjects."""

    def __init__(
        self,
        nc: NATS,
        names: StreamNames,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        read_url: str = "",
        keyring: Keyring | None = None,
    ) -> None:
        self.nc = nc
        self.names = names
        self.timeout = timeout
        # Tamper evidence (``eventstore.integrity``): with a keyring, every message this store
        # sends carries a MAC, and readers that hold it (projections, verify) check each event.
        self.keyring = keyring
        # Readers open connections of their own (eventstore.wire): to the same servers, as the
        # same user (TLS certificate, credentials, inbox prefix).
        self.wire = WireOptions.from_client(nc)
        if read_url:
            self.wire = dataclasses.replace(self.wire, url=read_url)
        self.read_url = self.wire.url
        self._js = nc.jetstream(timeout=timeout)
        self._nuid = NUID()

    # -- connection ------------------------------------------------------------------------------

    def _ensure_connected(self) -> None:
        """Fail fast while the client is reconnecting (a request would only wait for its timeout)."""
        if not self.nc.is_connected:
            raise StoreUnavailable("NATS is unreachable (reconnecting); try again")

    async def _request(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> Msg:
        """``nc.request`` that gives up as soon as the connection drops (outcome unknown)."""
        self._ensure_connected()
        task = asyncio.ensure_future(
            self.nc.request(subject, data, timeout=self.timeout, headers=headers)
        )
        try:
            while True:
                done, _ = await asyncio.wait((task,), timeout=LOST_CHECK_SECONDS)
                if done:
                    return task.result()
                if not self.nc.is_connected:
                    raise StoreUnavailable(
                        "the connection to NATS was lost while waiting; the outcome is unknown"
                    )
        finally:
            if not task.done():
                task.cancel()

    # -- provisioning -----------------------------------------------------------------------------

    async def ensure_streams(
        self, replicas: int = 1, duplicate_window: timedelta = DEFAULT_DUPLICATE_WINDOW
    ) -> None:
        """Create or update the source and derived streams to the required configuration."""
        if not await self.missing_streams([self.names.source]):
            await self.refuse_legacy_layout()
        for config in (
            source_stream_config(self.names, replicas, duplicate_window),
            derived_stream_config(self.names, replicas, duplicate_window),
            snapshot_stream_config(self.names, replicas),
        ):
            await self._ensure_stream(config)

    async def refuse_legacy_layout(self) -> None:
        """``IncompatibleStream`` if the source stream holds card events on per-kind subjects
        (``card.<id>.issued`` …, the first layout), which no reader of this release would see."""
        # STREAM.MSG.GET, not a direct get: a stream made by an older release may lack allow_direct
        request = _json.encode({"last_by_subj": self.names.subjects.legacy_cards})
        try:
            reply = await self._request(f"$JS.API.STREAM.MSG.GET.{self.names.source}", request)
        except Exception as exc:
            raise translate(exc) from exc
        found = msgspec.json.decode(reply.data, type=_MsgGetReply).message
        if found is not None:
            raise IncompatibleStream(
                f"stream {self.names.source} holds card events on per-kind subjects (e.g."
                f" {found.subject!r}); this release stores a card's events on one subject,"
                " card.<card_id>: replay them into a new stream (docs/eventstore.md)"
            )

    async def missing_streams(self, names: Sequence[str] | None = None) -> list[str]:
        """Which of ``names`` (default: the source and derived streams) do not exist."""
        missing: list[str] = []
        for name in (self.names.source, self.names.derived) if names is None else names:
            try:
                await self._js.stream_info(name)
            except nats.js.errors.NotFoundError:
                missing.append(name)
            except Exception as exc:
                raise translate(exc) from exc
        return missing

    async def _ensure_stream(self, config: StreamConfig) -> None:
        try:
            await self._js.add_stream(config)
            return
        except nats.js.errors.APIError as exc:
            if exc.err_code != ERR_STREAM_NAME_IN_USE:
                raise translate(exc) from exc
        except Exception as exc:
            raise translate(exc) from exc
        # Exists with another configuration (an older release, or a changed duplicate window):
        # bring it up to date. The server refuses unsafe changes (e.g. lifting deny_delete).
        try:
            await self._js.update_stream(config)
        except Exception as exc:
            raise translate(exc) from exc

    # -- writes -----------------------------------------------------------------------------------

    async def append(self, msg: OutgoingMessage) -> Position:
        """Append one message; a duplicate ``msg_id`` returns the original's position."""
        (msg,) = stamp((msg,))
        try:
            reply = await self._request(msg.subject, msg.data, message_headers(msg, self.keyring))
        except Exception as exc:
            raise translate(exc, expectations([msg])) from exc
        ack = self._decode_ack(reply, [msg])
        return Position(ack.stream, ack.seq)

    async def append_batch(self, msgs: Sequence[OutgoingMessage]) -> list[Position]:
        """Append messages as one ADR-50 atomic batch: all are stored, or none."""
        check_batch(msgs)
        return await self.send_batch(stamp(msgs))

    async def send_batch(self, msgs: Sequence[OutgoingMessage]) -> list[Position]:
        """Send an already checked atomic batch (see ``append_batch``)."""
        if not msgs:
            raise InvalidBatch("an atomic batch needs at least one message")
        self._ensure_connected()
        batch_id = self._nuid.next().decode()
        last = len(msgs)
        try:
            for index, msg in enumerate(msgs, start=1):
                headers = message_headers(msg, self.keyring)
                headers[h.BATCH_ID] = batch_id
                headers[h.BATCH_SEQUENCE] = str(index)
                if index < last:
                    # Only the commit is a request: the server stays silent on the others and
                    # reports any problem with them in the commit's ack.
                    await self.nc.publish(msg.subject, msg.data, headers=headers)
                else:
                    headers[h.BATCH_COMMIT] = h.BATCH_COMMIT_STORE
                    reply = await self._request(msg.subject, msg.data, headers)
        except Exception as exc:
            raise translate(exc, expectations(msgs)) from exc
        ack = self._decode_ack(reply, msgs)
        return batch_positions(ack.stream, ack.seq, ack.count, last)

    @staticmethod
    def _decode_ack(reply: Msg, msgs: Sequence[OutgoingMessage]) -> _PubAck:
        if reply.headers and reply.headers.get(h.STATUS) == "503":
            raise StoreUnavailable("no JetStream stream answered (is the stream provisioned?)")
        try:
            ack = _ack_decoder.decode(reply.data)
        except msgspec.DecodeError as exc:
            raise StoreError(f"not a JetStream ack: {reply.data[:200]!r}") from exc
        if ack.error is not None:
            err = ack.error
            raise from_api_error(err.code, err.err_code, err.description, expectations(msgs))
        if not ack.stream or ack.seq <= 0:
            raise StoreError(f"JetStream ack without a position: {reply.data[:200]!r}")
        return ack

    # -- reads ------------------------------------------------------------------------------------

    async def load(
        self, subject_filter: str, after_sequence: int = 0, *, stream: str | None = None
    ) -> Loaded:
        """Read one aggregate's messages after ``after_sequence``, in order, and its last sequence."""
        stream = stream or self.names.source
        messages: list[StoredMessage] = []
        start = after_sequence + 1
        while True:
            page, pending = await self._direct_batch(stream, start, subject_filter, READ_BATCH)
            messages.extend(page)
            if not page or pending == 0:
                break
            start = page[-1].sequence + 1
        if messages:
            last = messages[-1].sequence
        elif after_sequence == 0:
            last = 0
        else:
            # Nothing after the caller's sequence: confirm what the family's last really is, so a
            # CAS built on ``last_sequence`` is right even if the caller's number was not.
            found = await self.last_by_subject(subject_filter, stream=stream)
            last = 0 if found is None else found.sequence
        self._refuse_tampered(messages)
        return Loaded(stream, messages, last)

    def _refuse_tampered(self, messages: Sequence[StoredMessage]) -> None:
        """With a keyring, the write path's reads fail closed on a message whose MAC does not
        check: ``load`` (a card's history) and ``last_by_subject`` of a literal subject (a
        command's outcome marker) — what commands decide on."""
        keyring = self.keyring
        if keyring is None:
            return
        for message in messages:
            verdict = check_stored(keyring, message)
            if verdict is not Verdict.VALID:
                raise TamperedEvent(
                    f"{message.stream}:{message.sequence} ({message.subject}): MAC"
                    f" {verdict.value}; nothing is decided on it (see `jetledger verify`)"
                )

    async def _direct_batch(
        self, stream: str, start: int, subject_filter: str, batch: int
    ) -> tuple[list[StoredMessage], int]:
        """One batched direct get: up to ``batch`` messages from ``start``, and how many remain."""
        inbox = self.nc.new_inbox()
        request = _json.encode({"seq": start, "next_by_subj": subject_filter, "batch": batch})
        out: list[StoredMessage] = []
        self._ensure_connected()
        deadline = time.monotonic() + self.timeout
        try:
            sub = await self.nc.subscribe(inbox, pending_msgs_limit=batch + 8)
            try:
                await self.nc.publish(f"$JS.API.DIRECT.GET.{stream}", request, reply=inbox)
                while True:
                    left = max(deadline - time.monotonic(), 0.001)
                    try:
                        msg = await sub.next_msg(timeout=min(left, LOST_CHECK_SECONDS))
                    except TimeoutError:
                        if not self.nc.is_connected:
                            raise StoreUnavailable(
                                "the connection to NATS was lost during a read; try again"
                            ) from None
                        if time.monotonic() >= deadline:
                            raise
                        continue
                    status = msg.headers.get(h.STATUS) if msg.headers else None
                    if status is None:
                        if not out and msg.headers and h.NUM_PENDING not in msg.headers:
                            raise StoreError("the server does not support batched direct get")
                        out.append(stored_from_direct(msg))
                    elif status == "204":
                        headers = msg.headers or {}
                        return out, int(headers.get(h.NUM_PENDING, "0"))
                    elif status == "404":
                        return out, 0
                    elif status == "503":
                        raise StoreUnavailable(f"no direct-get responder for stream {stream}")
                    else:
                        raise StoreError(f"direct get on {stream} failed with status {status}")
            finally:
                await sub.unsubscribe()
        except StoreError:
            raise
        except Exception as exc:
            raise translate(exc) from exc

    async def last_by_subject(
        self, subject: str, *, stream: str | None = None
    ) -> StoredMessage | None:
        """Return the last message stored under a subject (or filter), or None."""
        stream = stream or self.names.source
        try:
            reply = await self._request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"")
        except Exception as exc:
            raise translate(exc) from exc
        status = reply.headers.get(h.STATUS) if reply.headers else None
        if status is None:
            found = stored_from_direct(reply)
            if "*" not in subject and ">" not in subject:
                # a literal subject is read to decide on (a card's last event, a command's
                # outcome marker); a filter
                # asks where a stream or family ends (verify, rebuilds), whatever is there
                self._refuse_tampered((found,))
            return found
        if status == "404":
            return None
        if status == "503":
            raise StoreUnavailable(f"no direct-get responder for stream {stream}")
        raise StoreError(f"direct get of {subject} on {stream} failed with status {status}")

    async def next_sequence(
        self, subject_filter: str, after: int, *, stream: str | None = None
    ) -> int | None:
        """Return the sequence of the first message under a filter after ``after``, or None.

        Read-your-writes uses it: a projection at position P covers sequence N when no message it
        consumes lies in (P, N], even though N itself (a command's marker) is not one of them.
        """
        stream = stream or self.names.source
        request = _json.encode({"seq": after + 1, "next_by_subj": subject_filter})
        try:
            reply = await self._request(f"$JS.API.DIRECT.GET.{stream}", request)
        except Exception as exc:
            raise translate(exc) from exc
        status = reply.headers.get(h.STATUS) if reply.headers else None
        if status is None:
            return stored_from_direct(reply).sequence
        if status == "404":
            return None
        if status == "503":
            raise StoreUnavailable(f"no direct-get responder for stream {stream}")
        raise StoreError(f"direct get after {after} on {stream} failed with status {status}")

    async def last_sequence(self, stream: str | None = None) -> int:
        """Return the last sequence of a stream (0 when empty)."""
        info = await self._stream_info(stream or self.names.source, {})
        return info.state.last_seq

    async def subjects(self, subject_filter: str, *, stream: str | None = None) -> list[str]:
        """Return every distinct subject stored under a filter (from the stream's subject index)."""
        stream = stream or self.names.source
        found: list[str] = []
        offset = 0
        while True:
            info = await self._stream_info(
                stream, {"subjects_filter": subject_filter, "offset": offset}
            )
            page = info.state.subjects or {}
            found.extend(page)
            offset += len(page)
            if not page or offset >= info.total:
                return found

    async def _stream_info(self, stream: str, request: dict[str, object]) -> _StreamInfo:
        try:
            reply = await self.nc.request(
                f"$JS.API.STREAM.INFO.{stream}", _json.encode(request), timeout=self.timeout
            )
            info = _info_decoder.decode(reply.data)
        except msgspec.DecodeError as exc:
            raise StoreError(f"malformed stream info for {stream}") from exc
        except Exception as exc:
            raise translate(exc) from exc
        if info.error is not None:
            err = info.error
            raise from_api_error(err.code, err.err_code, err.description)
        return info

    async def replay(
        self,
        from_sequence: int = 1,
        subject_filters: Sequence[str] | None = None,
        *,
        follow: bool = False,
        stream: str | None = None,
        batch: int = READ_BATCH,
        server_filter: bool = True,
    ) -> AsyncGenerator[StoredMessage, None]:
        """Yield messages in stream order from a sequence, up to the last one now (or forever).

        ``server_filter=False`` reads every message and filters here: much cheaper for the server
        when the filters match most of the stream (see ``eventstore.reader``).
        """
        batches = self.replay_batches(
            from_sequence - 1,
            subject_filters,
            follow=follow,
            stream=stream,
            batch=batch,
            server_filter=server_filter,
        )
        # Closing this generator early must close the reader (and its connection) at once.
        async with contextlib.aclosing(batches):
            async for got in batches:
                for message in got.messages:
                    yield message

    async def replay_batches(
        self,
        after: int = 0,
        subject_filters: Sequence[str] | None = None,
        *,
        until: int | None = None,
        follow: bool = False,
        stream: str | None = None,
        batch: int = READ_BATCH,
        server_filter: bool = True,
        in_worker: bool = False,
    ) -> AsyncGenerator[ReadBatch, None]:
        """Yield batches after ``after`` up to ``until`` (default: the last sequence now).

        ``in_worker=True`` reads in a child process (``eventstore.workers``): for long replays
        whose caller is CPU-bound, such as a rebuild.
        """
        stream = stream or self.names.source
        stop = (
            None if follow else (until if until is not None else await self.last_sequence(stream))
        )
        # A child process cannot be handed a TLS context: with TLS it reads in-process.
        reader = read_batches_in_worker if in_worker and self.wire.tls is None else read_batches
        batches = reader(
            self.wire,
            stream,
            max(after, 0),
            stop,
            list(subject_filters or []),
            server_filter=server_filter,
            batch=batch,
        )
        async with contextlib.aclosing(batches):
            async for got in batches:
                yield got

    def batch_publisher(self) -> BatchPublisher:
        """A publisher of atomic batches on a lean connection of its own (for relays)."""
        return BatchPublisher(self.wire, timeout=max(self.timeout, 10.0), keyring=self.keyring)

    async def subscribe(
        self,
        name: str,
        after: int,
        subject_filters: Sequence[str],
        *,
        stream: str | None = None,
        batch: int = READ_BATCH,
        ack_wait: timedelta = timedelta(seconds=30),
        server_filter: bool = False,
    ) -> Subscription:
        """Open the durable subscription ``name``, re-created to start right after ``after``."""
        return await open_subscription(
            self.wire,
            stream or self.names.source,
            name,
            after,
            list(subject_filters),
            server_filter=server_filter,
            batch=batch,
            ack_wait_seconds=ack_wait.total_seconds(),
        )
