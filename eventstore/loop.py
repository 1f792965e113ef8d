"""The event loop every jetledger process runs on: uvloop (libuv), or asyncio's own where uvloop
is not built (Windows).

Our processes are single Python threads doing many small I/O steps per event or command, so the
loop's own cost per callback, task and socket read is a large share of their CPU: the intake
handles ~45% more commands a second on uvloop (docs/intake.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new uvloop loop (asyncio's where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - only where uvloop has no build
        return asyncio.run(main)
    return uvloop.run(main)
