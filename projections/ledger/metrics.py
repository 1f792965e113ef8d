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
            "ledger.entry_created events published by the relay.",
            registry=r,
        )
        self.relay_backlog = Gauge(
            "jetledger_ledger_relay_backlog_entries",
            "Entries read by the relay's last round, not yet published (0 when caught up).",
            registry=r,
        )
