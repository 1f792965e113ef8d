"""Read-your-writes: wait, bounded, until a projection covers a stream position.

A command answers with the stream position of what it appended; a query may ask for "at least
that position". A projection's tracking row only moves on messages it applies, and a command's
position may be a message it does not apply (an outcome marker, a message for another
projection), so a position is *covered* when the projection reached it, or when no message the
projection applies lies between its position and the one asked for: one direct get
(``EventStore.next_sequence``) per filter answers that. Both query services use this helper.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from contracts.errors import InvalidArgument, Unavailable
from eventstore import EventStore

FIRST_PAUSE: Final = 0.002
MAX_PAUSE: Final = 0.05

Wait = Callable[[float], Awaitable[None]]


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def wait_until_covered(
    sequence: int,
    *,
    stream: str,
    filters: Sequence[str],
    applied: Callable[[], Awaitable[int]],
    store: EventStore,
    budget_seconds: float,
    wait: Wait = _sleep,
    what: str = "the projection",
) -> int:
    """Return the projection's position once it covers ``sequence`` of ``stream``.

    ``applied`` reads the projection's position; ``wait`` pauses until something may have moved
    (a wake-up, or a plain sleep). Raises ``InvalidArgument`` for a position beyond the stream's
    end and ``Unavailable`` (retryable) when ``budget_seconds`` pass first.
    """
    deadline = time.monotonic() + budget_seconds
    pause = FIRST_PAUSE
    checked_end = False
    while True:
        position = await applied()
        if position >= sequence:
            return position
        upcoming = [
            await store.next_sequence(subject_filter, position, stream=stream)
            for subject_filter in filters
        ]
        if all(seq is None or seq > sequence for seq in upcoming):
            if not checked_end:
                checked_end = True
                end = await store.last_sequence(stream)
                if sequence > end:
                    raise InvalidArgument(
                        f"position {sequence} is beyond the end of stream {stream} ({end})"
                    )
            return position
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Unavailable(
                f"{what} is at {stream}:{position}, not yet at {sequence}; retry shortly"
            )
        await wait(min(pause, remaining))
        pause = min(pause * 2, MAX_PAUSE)
