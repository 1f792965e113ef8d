"""The ledger projection's own Prometheus metrics (the runner's are in ``projections.metrics``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class LedgerMetrics:
    """Metric handles; build one per process (tests build their own)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.entries_written = Counter(
            "jetledger_ledger_entries_written_total", "Journal entries written.", registry=r
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
