"""After a committed batch: one JSON log line per notification (a delivery channel), counters by
kind, a wake-up; with the service's own formatter, so masking and encoding are what ships."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from projections.notifications.core import Notification
from projections.notifications.postgres import BatchResult
from services.notification.effects import CommittedEffects, notification_log
from services.notification.metrics import NotificationMetrics
from services.notification.wakeup import Waker
from services.observability.logs import JsonFormatter


def _note(n: int, kind: str, message: str, command_id: str = "tx-1") -> Notification:
    return Notification(
        notification_id=f"S:{n}",
        card_id="c1",
        kind=kind,  # type: ignore[arg-type]
        occurred_at=datetime(2026, 12, 3, tzinfo=UTC),
        message=message,
        amount=1_234,
        currency="EUR",
        command_id=command_id,
        stream="S",
        sequence=n,
    )


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    notification_log.addHandler(handler)
    level = notification_log.level
    notification_log.setLevel(logging.INFO)
    try:
        yield out
    finally:
        notification_log.removeHandler(handler)
        notification_log.setLevel(level)


async def test_each_notification_is_one_line_and_counted_by_kind(lines: io.StringIO) -> None:
    metrics, waker = NotificationMetrics(), Waker()
    notes = [
        _note(1, "purchase", 'Purchase of €12.34 at m "1" on card ending 4242'),
        _note(2, "purchase", "Purchase of €1.00 at m-2", command_id="tx-4111 1111 1111 1111"),
        _note(3, "low_balance", "Low balance: €0.50 available"),
    ]
    CommittedEffects(metrics, waker)("S", BatchResult(created=notes))
    logged = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [(x["notification_id"], x["kind"], x["amount"], x["currency"]) for x in logged] == [
        ("S:1", "purchase", 1_234, "EUR"),
        ("S:2", "purchase", 1_234, "EUR"),
        ("S:3", "low_balance", 1_234, "EUR"),
    ]
    assert logged[0]["msg"] == notes[0].message  # quotes and non-ASCII survive encoding
    assert logged[1]["command_id"] == "tx-****1111"  # the formatter masks what slipped through
    assert "4111" not in lines.getvalue().replace("****1111", "")
    created = metrics.registry.get_sample_value
    assert created("jetledger_notifications_created_total", {"kind": "purchase"}) == 2
    assert created("jetledger_notifications_created_total", {"kind": "low_balance"}) == 1
    assert waker.generation == 1
