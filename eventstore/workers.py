"""A replay read in a worker process, so the reading costs the caller almost no CPU.

A rebuild is bound by one Python process's CPU: reading (the wire, the delivery metadata),
decoding, projecting and formatting COPY rows all share one core. ``read_batches_in_worker``
moves the reading to a child process (``python -m eventstore.readerprocess``) with its own connection
and the same reader (``eventstore.reader``: contiguity, re-anchoring, no quiet end), which writes
each batch to its stdout as one length-prefixed pickled frame. The child reads ahead into a
bounded queue while the caller works, so two cores overlap; memory stays flat (a few batches).
An error in the child is raised in the caller as the same ``StoreError``/``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import struct
import sys
from collections.abc import AsyncGenerator, Sequence
from typing import Final

from eventstore.errors import StoreError, StoreUnavailable
from eventstore.model import StoredMessage
from eventstore.reader import DEFAULT_BATCH, ReadBatch
from eventstore.wire import WireOptions

READ_AHEAD: Final = 8  # batches the child may hold while the caller is busy
LENGTH: Final = struct.Struct(">I")  # frame length prefix

# One batch: (stream, last_sequence, pending, [(seq, subject, data, raw headers, time ns), ...])
Frame = tuple[str, int, int, list[tuple[int, str, bytes, bytes, int]]]


async def read_batches_in_worker(
    url: str | WireOptions,
    stream: str,
    after: int,
    stop: int | None,
    filters: Sequence[str],
    *,
    server_filter: bool = False,
    batch: int = DEFAULT_BATCH,
) -> AsyncGenerator[ReadBatch, None]:
    """``eventstore.reader.read_batches``, read by a child process."""
    options = url if isinstance(url, WireOptions) else WireOptions(url)
    if options.tls is not None:
        raise ValueError("a reader process cannot be handed a TLS context: read in-process")
    # Handed over on stdin, not argv: credentials must not show in the process table.
    spec = {
        "url": options.url, "user": options.user, "password": options.password,
        "token": options.token, "inbox_prefix": options.inbox_prefix, "stream": stream,
        "after": after, "stop": stop, "filters": list(filters), "server_filter": server_filter,
        "batch": batch,
    }  # fmt: skip
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventstore.readerprocess",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(json.dumps(spec).encode())
    child.stdin.close()
    try:
        while True:
            try:
                size = LENGTH.unpack(await child.stdout.readexactly(LENGTH.size))[0]
                frame = await child.stdout.readexactly(size)
            except asyncio.IncompleteReadError:
                raise StoreUnavailable("the reader process ended without a word") from None
            kind, body = frame[:1], frame[1:]
            if kind == b"D":
                return
            if kind == b"U":
                raise StoreUnavailable(body.decode(errors="replace"))
            if kind == b"S":
                raise StoreError(body.decode(errors="replace"))
            loaded: Frame = pickle.loads(body)  # noqa: S301 - our own child, our own pipe
            name, last, pending, rows = loaded
            messages = [
                StoredMessage(name, seq, subject, data, None, None, headers, stamp)
                for seq, subject, data, headers, stamp in rows
            ]
            yield ReadBatch(name, messages, last, pending)
    finally:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(child.wait(), 5.0)
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
