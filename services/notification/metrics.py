"""The notification service's Prometheus metrics, in its own registry (no ids in labels).

The projection's own (batches, lag, poison, leader) come from the runner: ``projections.metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class NotificationMetrics:
    """Counters, gauges and histograms of one notification service process."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.created = Counter(
            "jetledger_notifications_created_total",
            "Notifications created, by kind.",
            ["kind"],
            registry=r,
        )
        self.deliveries = Counter(
            "jetledger_notification_deliveries_total",
            "Webhook delivery attempts, by outcome (delivered, failed, dead, cancelled).",
            ["outcome"],
            registry=r,
        )
        self.retries = Counter(
            "jetledger_notification_retries_total",
            "Webhook deliveries scheduled for another attempt.",
            registry=r,
        )
        self.dead_letters = Counter(
            "jetledger_notification_dead_letters_total",
            "Webhook deliveries given up after the last attempt.",
            registry=r,
        )
        self.delivery_latency = Histogram(
            "jetledger_notification_delivery_seconds",
            "From the notification's commit to the receiver's 2xx.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.watchers = Gauge(
            "jetledger_notification_watchers",
            "Open WatchNotifications streams.",
            registry=r,
        )
