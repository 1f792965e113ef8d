"""The ledger projection's Prometheus metrics, in a registry of their own (no ids in labels)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class LedgerMetrics:
    """Metric handles; build one per process (tests build their own)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_projected = Counter(
            "jetledger_ledger_events_projected_total",
            "Source events applied to the ledger projection (redeliveries excluded).",
            registry=r,
        )
        self.entries_written = Counter(
            "jetledger_ledger_entries_written_total", "Journal entries written.", registry=r
        )
        self.redelivered_skipped = Counter(
            "jetledger_ledger_redelivered_skipped_total",
            "Delivered events already applied (skipped by the tracking row).",
            registry=r,
        )
        self.batch_duration = Histogram(
            "jetledger_ledger_batch_duration_seconds",
            "Time to apply and commit one fetched batch.",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.lag_events = Gauge(
            "jetledger_ledger_lag_events",
            "Matching events stored but not yet projected (from the consumer's pending count).",
            registry=r,
        )
        self.lag_seconds = Gauge(
            "jetledger_ledger_lag_seconds",
            "Age of the last projected event when its batch committed.",
            registry=r,
        )
        self.poison_events = Counter(
            "jetledger_ledger_poison_events_total",
            "Events that stopped the projector (undecodable or breaking an invariant).",
            registry=r,
        )
        self.stopped = Gauge(
            "jetledger_ledger_projector_stopped",
            "1 while the projector is stopped by a poison event.",
            registry=r,
        )
        self.leader = Gauge(
            "jetledger_ledger_projector_leader", "1 while this instance leads.", registry=r
        )
        self.failures = Counter(
            "jetledger_ledger_projector_failures_total",
            "Projector restarts after an infrastructure error (NATS, Postgres, lost lease).",
            registry=r,
        )
        self.entries_published = Counter(
            "jetledger_ledger_entries_published_total",
            "ledger.entry_created events published by the outbox relay.",
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "jetledger_ledger_outbox_backlog_entries",
            "Outbox rows read by the relay's last poll (0 when drained).",
            registry=r,
        )
