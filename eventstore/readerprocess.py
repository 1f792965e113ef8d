"""The child side of ``eventstore.workers``: ``python -m eventstore.readerprocess`` (spec on stdin).

Reads with the ordinary reader and writes each batch to stdout as a length-prefixed frame:
``B`` + a pickled ``Frame``, then ``D`` when done, or ``U``/``S`` + a message for an error
(``StoreUnavailable``/anything else). A sender thread does the writing, so reading goes on while
the parent is busy, up to ``READ_AHEAD`` batches. Kept apart from the package's own imports, so
running it as ``__main__`` imports nothing twice.
"""

from __future__ import annotations

import json
import pickle
import queue
import sys
import threading

from eventstore.errors import StoreUnavailable
from eventstore.loop import run_loop, tune_gc
from eventstore.reader import read_batches
from eventstore.wire import WireOptions
from eventstore.workers import LENGTH, READ_AHEAD, Frame


def _child(arguments: str) -> None:
    """The worker: read with the ordinary reader; a thread writes the frames to stdout."""
    spec = json.loads(arguments)
    options = WireOptions(
        spec["url"], None, None, spec["user"], spec["password"], spec["token"],
        spec["inbox_prefix"],
    )  # fmt: skip
    out = sys.stdout.buffer
    frames: queue.Queue[bytes] = queue.Queue(READ_AHEAD)

    def send() -> None:
        while True:
            frame = frames.get()
            out.write(LENGTH.pack(len(frame)) + frame)
            out.flush()
            if frame[:1] != b"B":
                return

    sender = threading.Thread(target=send, daemon=True)
    sender.start()

    async def read() -> None:
        async for got in read_batches(
            options, spec["stream"], spec["after"], spec["stop"], spec["filters"],
            server_filter=spec["server_filter"], batch=spec["batch"],
        ):  # fmt: skip
            rows = [(m.sequence, m.subject, m.data, m.raw_headers, m.time_ns) for m in got.messages]
            frame: Frame = (got.stream, got.last_sequence, got.pending, rows)
            frames.put(b"B" + pickle.dumps(frame, pickle.HIGHEST_PROTOCOL))

    tune_gc()  # a worker lives as long as its read: a service's life, or a whole rebuild
    try:
        run_loop(read())
        frames.put(b"D")  # done
    except StoreUnavailable as exc:
        frames.put(b"U" + str(exc).encode())
    except Exception as exc:  # reported to the caller, which raises it
        frames.put(b"S" + f"{type(exc).__name__}: {exc}".encode())
    sender.join()


if __name__ == "__main__":
    _child(sys.stdin.read())
