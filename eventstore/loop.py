"""The event loop every jetledger process runs on: uvloop (libuv), or asyncio's own where uvloop
is not built (Windows); and the garbage collector's settings of a long-running process.

Our processes are single Python threads doing many small I/O steps per event or command, so the
loop's own cost per callback, task and socket read is a large share of their CPU: the intake
handles ~45% more commands a second on uvloop (docs/intake.md).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

T = TypeVar("T")

# Tracked objects allocated (net) between two young collections; CPython's default is 700.
GC_YOUNG_THRESHOLD: Final = 10_000


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new uvloop loop (asyncio's where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - only where uvloop has no build
        return asyncio.run(main)
    return uvloop.run(main)


def tune_gc() -> None:
    """Set the cyclic garbage collector up for a long-running service, once everything is imported.

    Measured in the soak benchmark (docs/soak.md): the transaction service spent ~3.5 s of CPU a
    minute collecting (~6 % of a core, ~90 µs a command): ~2,400 young collections a minute, and a
    full one every ~3 s that walked the ~75,000 objects of the imported modules (functions, types,
    descriptors) which never die. ``gc.freeze()`` moves what exists now (those) out of every
    later collection, and a young generation of ``GC_YOUNG_THRESHOLD`` objects instead of 700
    makes young collections ~14× rarer; an object that dies young is freed by reference counting
    either way. After both: ~0.2 s a minute. Garbage in cycles still gets collected, a little
    later (at most ~10,000 young objects' worth). A second call changes nothing.
    """
    if gc.get_threshold()[0] == GC_YOUNG_THRESHOLD:
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
