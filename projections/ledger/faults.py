"""A test-only fault hook: SIGKILL the projector process at an exact point of a batch.

Set ``JETLEDGER_LEDGER_FAULT=<point>`` (read through ``Settings.ledger_fault``), or
``<point>@<n>`` to fire at the n-th time the point is reached (default 1). Points:

- ``before_commit`` — the batch's rows, outbox and tracking row are written, COMMIT not yet sent;
- ``after_commit`` — COMMIT returned, the batch is not yet acknowledged to JetStream;
- ``after_ack`` — the batch was acknowledged (the next batch has not started).

An empty value disables the hook; it costs one comparison per batch. Never set it in production.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field

POINTS = frozenset({"before_commit", "after_commit", "after_ack"})


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
