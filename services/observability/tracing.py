"""OpenTelemetry set-up of a service process: off unless ``JETLEDGER_OTLP_ENDPOINT`` is set.

With an endpoint, spans go to that OTLP/gRPC collector in batches; ``service.name`` is
``jetledger-<service>``. Where spans come from: the gRPC server interceptor (one SERVER span per
call), the events' ``traceparent`` header (``eventstore.tracing``: the intake writes it, each
projection's runner opens a CONSUMER span per traced message it commits), and the webhook
dispatcher (a CLIENT span per attempt, parent stored with the delivery). docs/metrics.md
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from services.settings import Settings


def tracer_provider(
    service: str, processor: SpanProcessor, *, sample_ratio: float = 1.0
) -> TracerProvider:
    """A provider for ``service`` whose spans go to ``processor``."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"jetledger-{service}"}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(processor)
    return provider


def setup_tracing(service: str, settings: Settings) -> TracerProvider | None:
    """Install the process's tracer provider when an OTLP endpoint is configured."""
    if not settings.otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    provider = tracer_provider(
        service, BatchSpanProcessor(exporter), sample_ratio=settings.trace_sample_ratio
    )
    trace.set_tracer_provider(provider)
    return provider
