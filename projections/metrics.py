"""Prometheus metrics every projection exports through the runner (label: the projection's name).

Names are ``jetledger_projection_*``; labels hold the projection (``ledger``, ``notifications``) and,
for the lag, the stream: never an id. Each service registers them in its own registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BATCH_BUCKETS: Final = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass
class ProjectionMetrics:
    """The runner's metric families; ``labels(name)`` gives one projection's handles."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_applied = Counter(
            "jetledger_projection_events_applied_total",
            "Stream messages applied (redeliveries and non-matching messages excluded).",
            ["projection"],
            registry=r,
        )
        self.batches = Counter(
            "jetledger_projection_batches_total",
            "Batches committed, one Postgres transaction each.",
            ["projection"],
            registry=r,
        )
        self.skipped = Counter(
            "jetledger_projection_redelivered_skipped_total",
            "Messages read again at or below the tracking row (skipped: already applied).",
            ["projection"],
            registry=r,
        )
        self.batch_duration = Histogram(
            "jetledger_projection_batch_duration_seconds",
            "Time to apply and commit one batch.",
            ["projection"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.lag_events = Gauge(
            "jetledger_projection_lag_events",
            "Messages stored in the stream and not yet applied (read by the leader).",
            ["projection", "stream"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "jetledger_projection_lag_seconds",
            "Age of the oldest message stored and not yet applied (0 when caught up).",
            ["projection", "stream"],
            registry=r,
        )
        self.poison = Counter(
            "jetledger_projection_poison_events_total",
            "Messages that stopped the projection (undecodable or breaking an invariant).",
            ["projection"],
            registry=r,
        )
        self.stopped = Gauge(
            "jetledger_projection_stopped",
            "1 while the projection is stopped by a poison message or a fatal error.",
            ["projection"],
            registry=r,
        )
        self.leader = Gauge(
            "jetledger_projection_leader",
            "1 while this instance is the projection's writer.",
            ["projection"],
            registry=r,
        )
        self.restarts = Counter(
            "jetledger_projection_restarts_total",
            "Restarts after an infrastructure error (NATS, Postgres, a lost lease).",
            ["projection"],
            registry=r,
        )
        self.reanchors = Counter(
            "jetledger_projection_reanchors_total",
            "Consumers re-created after a gap, a redelivery or a stall (nothing was skipped).",
            ["projection"],
            registry=r,
        )
