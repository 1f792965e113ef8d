"""A test-only fault hook: SIGKILL a projection's process at an exact point of a batch.

The ledger reads ``JETLEDGER_LEDGER_FAULT``, the notifications ``JETLEDGER_NOTIFICATION_FAULT``
(through ``Settings``): ``<point>``, or ``<point>@<n>`` to fire the n-th time the point is reached
(default 1). Points:

- ``before_commit`` — the batch's rows and tracking row are written, COMMIT not yet sent;
- ``after_commit`` — COMMIT returned, the batch is not yet acknowledged to JetStream
  (``crash_after_commit`` is an older name for it);
- ``after_ack`` — the batch was acknowledged (the next batch has not started).

An empty value disables the hook; it costs one comparison per batch. Never set it in production.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Final

POINTS: Final = frozenset({"before_commit", "after_commit", "after_ack"})
_ALIASES: Final = {"crash_after_commit": "after_commit"}


@dataclass
class FaultHook:
    """Kills this process with SIGKILL when the configured point is reached for the n-th time."""

    spec: str = ""
    _point: str = field(init=False, default="")
    _remaining: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not self.spec:
            return
        point, _, count = self.spec.partition("@")
        point = _ALIASES.get(point, point)
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r}; known: {sorted(POINTS)}")
        self._point = point
        self._remaining = int(count or 1)

    def reached(self, point: str) -> None:
        """Mark ``point`` as reached; SIGKILL ourselves if this is the configured n-th time."""
        if point != self._point:
            return
        self._remaining -= 1
        if self._remaining == 0:
            print(f"jetledger fault hook: SIGKILL at {point}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
