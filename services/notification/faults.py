"""A test-only fault hook of the notification projector, chosen by an environment variable.

``JETLEDGER_NOTIFICATION_FAULT=crash_after_commit`` SIGKILLs the process right after the first
batch that created a notification has committed and before its messages are acked: the crash
window that exactly-once rows must survive (tests/integration/notification/test_crash.py).
``skip_ack`` never acks, so every message is redelivered after the ack wait. Empty (the default)
does nothing; production never sets it.
"""

from __future__ import annotations

import os
import signal
from typing import Final

CRASH_AFTER_COMMIT: Final = "crash_after_commit"
SKIP_ACK: Final = "skip_ack"


def after_commit(fault: str, created: int) -> None:
    """Run the configured fault between a batch's commit and its ack."""
    if fault == CRASH_AFTER_COMMIT and created:
        os.kill(os.getpid(), signal.SIGKILL)


def should_ack(fault: str) -> bool:
    """Tell whether messages are to be acked at all."""
    return fault != SKIP_ACK
