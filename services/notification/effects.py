"""What the notification service does once a batch of notifications is committed.

One structured log line per new notification (the log delivery channel), the per-kind counter,
and a poke so ``WatchNotifications`` streams and the webhook dispatcher look again at once.
Nothing here may run before the commit: a notification that was logged must exist.
"""

from __future__ import annotations

import logging
from collections import Counter

from projections.notifications.postgres import BatchResult
from services.notification.metrics import NotificationMetrics
from services.notification.wakeup import Waker

notification_log = logging.getLogger("jetledger.notification.delivered")


class CommittedEffects:
    """The ``on_committed`` callback of the notification projection."""

    def __init__(self, metrics: NotificationMetrics, waker: Waker) -> None:
        self._metrics = metrics
        self._waker = waker

    def __call__(self, stream: str, result: BatchResult) -> None:
        self._waker.poke()
        for kind, count in Counter(note.kind for note in result.created).items():
            self._metrics.created.labels(kind).inc(count)
        for note in result.created:
            # The text was redacted by the core: it never holds more than a card's last four digits.
            notification_log.info(
                note.message,
                extra={
                    "notification_id": note.notification_id,
                    "card_id": note.card_id,
                    "kind": note.kind,
                    "command_id": note.command_id,
                    "amount": note.amount,
                    "currency": note.currency,
                },
            )
