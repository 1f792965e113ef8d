"""Per-RPC metrics from one server interceptor, and the process/platform collectors.

Every label value is bounded: the method is one the server hosts (an unknown method never reaches
an interceptor's handler), the code is a gRPC status name. No exception class names, no ids.
"""

from __future__ import annotations

import weakref

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

# An RPC here is ~1-5 ms (a group-committed append); a long-poll read may wait seconds.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def register_platform_collectors(registry: CollectorRegistry) -> None:
    """Add the process (CPU, memory, fds), platform (Python version) and GC collectors that the
    default registry has and a custom registry lacks. Idempotent per registry."""
    names = getattr(registry, "_names_to_collectors", {})
    if "process_cpu_seconds_total" not in names:
        ProcessCollector(registry=registry)
    if "python_info" not in names:
        PlatformCollector(registry=registry)
    if "python_gc_objects_collected_total" not in names:
        GCCollector(registry=registry)


def split_method(full: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``)."""
    _, _, rest = full.partition("/")
    service, _, method = rest.partition("/")
    return service or "unknown", method or "unknown"


class RpcMetrics:
    """``jetledger_grpc_server_handled_total`` and ``jetledger_grpc_server_handling_seconds``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "jetledger_grpc_server_handled_total",
            "RPCs completed on the server, by service, method and gRPC status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "jetledger_grpc_server_handling_seconds",
            "Time from the call's arrival to its status, by service, method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        service, name = split_method(method)
        self.handled.labels(service, name, code.name).inc()
        self.seconds.labels(service, name, code.name).observe(seconds)


_RPC_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, RpcMetrics] = weakref.WeakKeyDictionary()


def rpc_metrics(registry: CollectorRegistry) -> RpcMetrics:
    """The registry's one ``RpcMetrics`` (a second server on the same registry shares it)."""
    found = _RPC_METRICS.get(registry)
    if found is None:
        found = _RPC_METRICS[registry] = RpcMetrics(registry)
    return found
