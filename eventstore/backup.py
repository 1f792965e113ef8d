"""Stream backup and restore through JetStream's snapshot API (what ``nats stream backup`` uses).

``snapshot_stream`` asks the server for a snapshot of one stream (``$JS.API.STREAM.SNAPSHOT``):
the server streams the stream's files to an inbox in chunks, each acknowledged (flow control),
and ends with an empty message; the bytes are the server's own format and are kept as they come,
beside the stream's configuration and state (``<stream>.json``). ``restore_stream`` sends them
back (``$JS.API.STREAM.RESTORE``): the stream must not exist. Messages, sequences, subjects,
headers and store times come back exactly; the consumers are left out (projections keep their
positions in Postgres and re-create their consumers).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from contracts.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable

CHUNK_BYTES: Final = 512 * 1024  # under the server's 1 MiB max_payload; what `nats` uses
API_TIMEOUT: Final = 30.0
CHUNK_TIMEOUT: Final = 60.0
FINISH_TIMEOUT: Final = 3600.0  # between two chunks of a snapshot: a large stream is read from disk


@dataclass(frozen=True)
class StreamBackup:
    """What one stream's backup holds, as recorded in ``<stream>.json``."""

    stream: str
    messages: int
    first_sequence: int
    last_sequence: int
    bytes: int
    sha256: str

    @property
    def data_file(self) -> str:
        return f"{self.stream}.snapshot"


def _check(reply: dict[str, Any], what: str) -> dict[str, Any]:
    error = reply.get("error")
    if error:
        code, text = error.get("err_code"), error.get("description", "")
        if code == 10059:  # stream not found
            raise NotFound(f"{what}: {text}")
        if code == 10058:  # stream name already in use
            raise AlreadyExists(f"{what}: {text}")
        raise Unavailable(f"{what}: {text} (JetStream error {code})")
    return reply


async def _api(nc: NATS, subject: str, body: dict[str, Any], what: str) -> dict[str, Any]:
    try:
        msg = await nc.request(subject, json.dumps(body).encode(), timeout=API_TIMEOUT)
    except TimeoutError as exc:
        raise Unavailable(f"{what}: no answer from JetStream within {API_TIMEOUT:.0f}s") from exc
    return _check(json.loads(msg.data), what)


async def snapshot_stream(nc: NATS, stream: str, directory: Path) -> StreamBackup:
    """Write ``<stream>.snapshot`` and ``<stream>.json`` into ``directory``; return the summary."""
    what = f"snapshot of stream {stream}"
    inbox = nc.new_inbox()
    chunks: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        await chunks.put(msg)

    sub = await nc.subscribe(inbox, cb=collect)
    target = directory / f"{stream}.snapshot"
    digest = hashlib.sha256()
    size = 0
    try:
        reply = await _api(
            nc,
            f"$JS.API.STREAM.SNAPSHOT.{stream}",
            {
                "deliver_subject": inbox,
                "no_consumers": True,
                "chunk_size": CHUNK_BYTES,
                "jsck": False,
            },
            what,
        )
        with target.open("wb") as out:
            while True:
                try:
                    msg = await asyncio.wait_for(chunks.get(), CHUNK_TIMEOUT)
                except TimeoutError as exc:
                    raise Unavailable(f"{what}: the server stopped sending") from exc
                if not msg.data:
                    status = (msg.headers or {}).get("Status", "")
                    if status and status != "204":
                        text = (msg.headers or {}).get("Description", "")
                        raise Unavailable(f"{what}: the server failed it: {status} {text}".strip())
                    break  # end of the snapshot
                out.write(msg.data)
                digest.update(msg.data)
                size += len(msg.data)
                if msg.reply:
                    await nc.publish(msg.reply, b"")  # ack: flow control
    finally:
        await sub.unsubscribe()
    state = reply.get("state", {})
    backup = StreamBackup(
        stream=stream,
        messages=int(state.get("messages", 0)),
        first_sequence=int(state.get("first_seq", 0)),
        last_sequence=int(state.get("last_seq", 0)),
        bytes=size,
        sha256=digest.hexdigest(),
    )
    meta = {
        "stream": stream,
        "config": reply.get("config", {}),
        "state": state,
        "snapshot": {"file": backup.data_file, "bytes": size, "sha256": backup.sha256},
    }
    (directory / f"{stream}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return backup


def read_backup(directory: Path, stream: str) -> tuple[dict[str, Any], Path]:
    """The recorded metadata of ``stream``'s backup and its data file, checked against its hash."""
    meta_file = directory / f"{stream}.json"
    if not meta_file.is_file():
        raise InvalidArgument(f"{directory} holds no backup of stream {stream} ({meta_file.name})")
    meta: dict[str, Any] = json.loads(meta_file.read_text())
    data = directory / meta["snapshot"]["file"]
    digest = hashlib.sha256()
    with data.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != meta["snapshot"]["sha256"]:
        raise InvalidArgument(f"{data} does not match its recorded sha256: a damaged backup")
    return meta, data


async def restore_stream(nc: NATS, directory: Path, stream: str) -> dict[str, Any]:
    """Re-create ``stream`` from its backup in ``directory``; return the stream's new state.

    ``AlreadyExists`` if the stream exists: a restore never overwrites (delete it first).
    """
    meta, data = read_backup(directory, stream)
    what = f"restore of stream {stream}"
    reply = await _api(
        nc,
        f"$JS.API.STREAM.RESTORE.{stream}",
        {"config": meta["config"], "state": meta["state"]},
        what,
    )
    deliver = reply["deliver_subject"]
    try:
        with data.open("rb") as source:
            for chunk in iter(lambda: source.read(CHUNK_BYTES), b""):
                await nc.request(deliver, chunk, timeout=CHUNK_TIMEOUT)
        # the server restores the whole stream before it answers this one: may take long
        done = await nc.request(deliver, b"", timeout=FINISH_TIMEOUT)
    except NoRespondersError as exc:
        # seen on a loaded machine with a 100k-message stream: the server dropped the restore's
        # subscription mid-way ("took too long" in its log); start again on an empty NATS
        raise Unavailable(
            f"{what}: the server gave the restore up half-way; delete the stream and retry"
        ) from exc
    except TimeoutError as exc:
        raise Unavailable(f"{what}: JetStream stopped answering") from exc
    info = _check(json.loads(done.data), what)
    state: dict[str, Any] = info.get("state", {})
    return state
