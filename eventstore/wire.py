"""A lean NATS protocol connection for bulk reads: the event store's data path out of JetStream.

nats-py spends ~40–90 µs of client CPU per delivered message (a ``Msg`` object, a coroutine and a
queue hop per message, every header parsed, reply metadata split into objects): that, not the
server, capped every reader of this project at ~11–22k messages/s. Reads need very little of a
client: a socket, ``SUB``/``UNSUB``/``PUB``, and the server's ``MSG``/``HMSG``/``PING`` lines. This
connection parses them synchronously in ``data_received`` and hands each message to a plain
callback as bytes (headers unparsed), ~5 µs a message. It is used only by ``eventstore`` readers,
one connection per reader; writes and provisioning stay on nats-py.

Limits, on purpose: no reconnect (a reader re-anchors on a fresh connection: the caller's position
decides, not the connection's), plain TCP or TLS, credentials from the URL (``user:pass@`` or a
``token@``). Every failure is a ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import unquote, urlsplit

from nats.nuid import NUID

from eventstore.errors import StoreUnavailable

# handler(subject, reply, raw headers (b"" if none), payload): called synchronously, in order.
Handler = Callable[[bytes, bytes, bytes, bytes], None]

_CRLF: Final = b"\r\n"
_MAX_CONTROL_LINE: Final = 64 * 1024
_VERSION: Final = "jetledger-reader/1"


@dataclass(frozen=True, slots=True)
class Reply:
    """A request's answer: its raw headers, payload, and the status code of a status message."""

    headers: bytes
    data: bytes

    @property
    def status(self) -> int:
        """The inline status (404, 408, 503, …) of a status message, or 0 for a plain message."""
        return status_of(self.headers)


def status_of(headers: bytes) -> int:
    """Return the inline status code of ``NATS/1.0 <code> <text>`` headers (0 when none)."""
    if len(headers) > 12 and headers[8:9] == b" ":
        code = headers[9:12]
        if code.isdigit():
            return int(code)
    return 0


def status_description(headers: bytes) -> str:
    """Return the text after an inline status code (``No Messages``, ``Consumer Deleted``)."""
    line = headers.split(_CRLF, 1)[0]
    return line[13:].decode(errors="replace").strip()


def header_value(headers: bytes, name: bytes) -> bytes | None:
    """Return one header's value from raw headers without parsing the others."""
    for line in headers.split(_CRLF)[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name.lower():
            return value.strip()
    return None


def hpub_frame(subject: str, headers: Mapping[str, str], payload: bytes, reply: str = "") -> bytes:
    """One ``HPUB`` protocol frame: a message with headers (and a reply subject, if any)."""
    head = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    block = head.encode()
    total = len(block) + len(payload)
    where = f"{subject} {reply}" if reply else subject
    return f"HPUB {where} {len(block)} {total}\r\n".encode() + block + payload + _CRLF


@dataclass(frozen=True, slots=True)
class WireOptions:
    """How to reach NATS as this process does: servers, TLS, credentials, reply-subject prefix.

    ``EventStore`` takes them from its nats-py client (``from_client``), so readers connect as the
    same user, with the same certificate, and receive replies only under the same inbox prefix
    (a secured server allows nothing else).
    """

    url: str
    tls: ssl.SSLContext | None = None
    tls_hostname: str | None = None
    user: str = ""
    password: str = ""
    token: str = ""
    inbox_prefix: str = "_INBOX"

    @classmethod
    def from_client(cls, nc: Any) -> WireOptions:
        """The options of a connected nats-py client (its public ``servers``/``options``)."""
        options: dict[str, Any] = getattr(nc, "options", {}) or {}
        inbox = nc.new_inbox()
        if isinstance(inbox, bytes):
            inbox = inbox.decode()
        return cls(
            url=",".join(server.geturl() for server in nc.servers),
            tls=options.get("tls"),
            tls_hostname=options.get("tls_hostname"),
            user=options.get("user") or "",
            password=options.get("password") or "",
            token=options.get("token") or "",
            inbox_prefix=inbox.rsplit(".", 1)[0],
        )


@dataclass(frozen=True, slots=True)
class _Server:
    host: str
    port: int
    tls: bool
    user: str
    password: str
    token: str


def _servers(url: str) -> list[_Server]:
    found = []
    for part in url.split(","):
        parts = urlsplit(part.strip() if "://" in part else f"nats://{part.strip()}")
        user, password, token = "", "", ""
        if parts.username and parts.password is not None:
            user, password = unquote(parts.username), unquote(parts.password)
        elif parts.username:
            token = unquote(parts.username)
        found.append(
            _Server(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 4222,
                tls=parts.scheme == "tls",
                user=user,
                password=password,
                token=token,
            )
        )
    return found


class WireConnection(asyncio.Protocol):
    """One NATS client connection for reading; see the module docstring."""

    def __init__(self, options: WireOptions | None = None) -> None:
        self._options = options or WireOptions("")
        self._transport: asyncio.Transport | None = None
        self._rest = b""  # received bytes not parsed yet (an incomplete line or payload)
        self.last_data = time.monotonic()  # when bytes last arrived (stall detection)
        self._subs: dict[int, Handler] = {}
        self._sids = itertools.count(1)
        self._pongs: list[asyncio.Future[None]] = []
        self._on_lost: set[Callable[[], None]] = set()
        self._info: asyncio.Future[dict[str, object]] | None = None
        self.error: StoreUnavailable | None = None
        self._inbox_prefix = f"{self._options.inbox_prefix}.{NUID().next().decode()}"
        self._inboxes = itertools.count(1)

    # -- opening and closing ----------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        target: str | WireOptions,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> WireConnection:
        """Connect to the first server that answers; raise ``StoreUnavailable``."""
        options = target if isinstance(target, WireOptions) else WireOptions(target)
        errors: list[str] = []
        for server in _servers(options.url):
            conn = cls(options)
            try:
                await asyncio.wait_for(conn._connect(server), timeout)
            except (OSError, TimeoutError, StoreUnavailable, ValueError, ssl.SSLError) as exc:
                conn.close()
                errors.append(f"{server.host}:{server.port}: {exc or 'timed out'}")
                continue
            return conn
        raise StoreUnavailable(f"cannot reach NATS ({'; '.join(errors)})")

    async def _connect(self, server: _Server) -> None:
        loop = asyncio.get_running_loop()
        self._info = loop.create_future()
        transport, _ = await loop.create_connection(lambda: self, server.host, server.port)
        info = await self._info
        options = self._options
        tls = bool(server.tls or options.tls or info.get("tls_required"))
        if tls:
            context = options.tls or ssl.create_default_context()
            hostname = options.tls_hostname or server.host
            upgraded = await loop.start_tls(transport, self, context, server_hostname=hostname)
            if upgraded is None:
                raise StoreUnavailable("TLS upgrade failed")
            self._transport = upgraded
        connect: dict[str, object] = {
            "verbose": False,
            "pedantic": False,
            "headers": True,
            "no_responders": True,
            "protocol": 1,
            "lang": "python",
            "version": _VERSION,
            "name": "jetledger-reader",
            "tls_required": tls,
        }
        user = server.user or options.user
        if user:
            connect.update(user=user, **{"pass": server.password or options.password})
        token = server.token or options.token
        if token:
            connect["auth_token"] = token
        self._write(b"CONNECT " + json.dumps(connect).encode() + _CRLF)
        await self.flush(timeout=5.0)

    def close(self) -> None:
        """Close the socket; pending waits fail with ``StoreUnavailable``."""
        if self._transport is not None:
            self._transport.close()
        self._lost(StoreUnavailable("reader connection closed"))

    @property
    def closed(self) -> bool:
        """True once the connection is closed or lost."""
        return self.error is not None

    def on_lost(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` once when the connection is lost; return a function that unregisters."""
        self._on_lost.add(callback)
        return lambda: self._on_lost.discard(callback)

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, but not always an ``asyncio.Transport`` subclass (uvloop's is not).
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(StoreUnavailable(f"NATS connection lost{f': {exc}' if exc else ''}"))

    def _lost(self, error: StoreUnavailable) -> None:
        if self.error is not None:
            return
        self.error = error
        for waiter in self._pongs:
            if not waiter.done():
                waiter.set_exception(error)
        self._pongs.clear()
        if self._info is not None and not self._info.done():
            self._info.set_exception(error)
        for callback in list(self._on_lost):
            callback()
        self._on_lost.clear()

    def data_received(self, data: bytes) -> None:
        # Parsed as immutable bytes: slicing them is one copy, and the unparsed tail is kept.
        buf = self._rest + data if self._rest else data
        pos = 0
        end = len(buf)
        subs = self._subs
        find = buf.find
        startswith = buf.startswith
        self.last_data = time.monotonic()
        try:
            while pos < end:
                eol = find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > _MAX_CONTROL_LINE:
                        raise StoreUnavailable("NATS protocol line too long")
                    break
                if startswith(b"HMSG ", pos):
                    # HMSG <subject> <sid> [reply] <header bytes> <total bytes>
                    args = buf[pos + 5 : eol].split(b" ")
                    total = int(args[-1])
                    start = eol + 2
                    if start + total + 2 > end:
                        break  # the payload is not all here yet
                    split = start + int(args[-2])
                    handler = subs.get(int(args[1]))
                    if handler is not None:
                        handler(
                            args[0],
                            args[2] if len(args) == 5 else b"",
                            buf[start:split],
                            buf[split : start + total],
                        )
                    pos = start + total + 2
                elif startswith(b"MSG ", pos):
                    args = buf[pos + 4 : eol].split(b" ")
                    total = int(args[-1])
                    start = eol + 2
                    if start + total + 2 > end:
                        break
                    handler = subs.get(int(args[1]))
                    if handler is not None:
                        reply = args[2] if len(args) == 4 else b""
                        handler(args[0], reply, b"", buf[start : start + total])
                    pos = start + total + 2
                else:
                    line = buf[pos:eol]
                    pos = eol + 2
                    self._control(line)
        except StoreUnavailable as exc:
            self._fail(exc)
            return
        except (ValueError, IndexError) as exc:
            self._fail(StoreUnavailable(f"malformed NATS protocol data: {exc}"))
            return
        self._rest = buf[pos:] if pos < end else b""

    def _control(self, line: bytes) -> None:
        if line.startswith(b"PING"):
            self._write(b"PONG\r\n")
        elif line.startswith(b"PONG"):
            if self._pongs:
                waiter = self._pongs.pop(0)
                if not waiter.done():
                    waiter.set_result(None)
        elif line.startswith(b"INFO"):
            info = json.loads(line[5:])
            if self._info is not None and not self._info.done():
                self._info.set_result(info)
        elif line.startswith(b"-ERR"):
            raise StoreUnavailable(f"NATS refused the reader: {line[5:].decode(errors='replace')}")
        # "+OK" (verbose mode is off, but a server may still send it): nothing to do

    def _fail(self, error: StoreUnavailable) -> None:
        self._lost(error)
        if self._transport is not None:
            self._transport.close()

    # -- operations -------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        assert self._transport is not None
        self._transport.write(data)

    def new_inbox(self) -> str:
        """Return a reply subject unique to this connection."""
        return f"{self._inbox_prefix}.{next(self._inboxes)}"

    def subscribe(self, subject: str, handler: Handler) -> int:
        """Deliver messages on ``subject`` to ``handler``; return the subscription id."""
        sid = next(self._sids)
        self._subs[sid] = handler
        self._write(f"SUB {subject} {sid}\r\n".encode())
        return sid

    def unsubscribe(self, sid: int) -> None:
        """Stop a subscription (quietly, if the connection is already gone)."""
        if self._subs.pop(sid, None) is not None and self.error is None:
            self._write(f"UNSUB {sid}\r\n".encode())

    def write(self, frames: bytes) -> None:
        """Send protocol frames built with ``hpub_frame`` (buffered: see ``flush``)."""
        self._write(frames)

    def publish(self, subject: str, payload: bytes = b"", reply: str = "") -> None:
        """Send one message (buffered: see ``flush``)."""
        head = (
            f"PUB {subject} {reply} {len(payload)}\r\n"
            if reply
            else f"PUB {subject} {len(payload)}\r\n"
        )
        self._write(head.encode() + payload + _CRLF)

    async def flush(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Round-trip a PING: everything written before it has reached the server."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs.append(waiter)
        self._write(b"PING\r\n")
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise StoreUnavailable("NATS did not answer a PING in time") from None

    async def request(
        self,
        subject: str,
        payload: bytes,
        timeout: float = 5.0,  # noqa: ASYNC109
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send a request and return its first answer (a 503 status means no responder)."""
        inbox = self.new_inbox()
        answer: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def on_reply(_: bytes, __: bytes, headers: bytes, data: bytes) -> None:
            if not answer.done():
                answer.set_result(Reply(headers, data))

        def on_lost() -> None:
            if not answer.done() and self.error is not None:
                answer.set_exception(self.error)

        sid = self.subscribe(inbox, on_reply)
        forget = self.on_lost(on_lost)
        try:
            if headers:
                self._write(hpub_frame(subject, headers, payload, inbox))
            else:
                self.publish(subject, payload, inbox)
            try:
                reply = await asyncio.wait_for(answer, timeout)
            except TimeoutError:
                raise StoreUnavailable(
                    f"no answer to {subject.split('.', 4)[-1]!r} in time"
                ) from None
        finally:
            forget()
            with contextlib.suppress(StoreUnavailable):
                self.unsubscribe(sid)
        if reply.status == 503:
            raise StoreUnavailable(f"no JetStream responder for {subject}")
        return reply
