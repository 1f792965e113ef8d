"""W3C trace context in event headers (``traceparent``, ``tracestate``): OpenTelemetry's API only.

Tracing is off unless a process installs an SDK tracer provider (``services.observability
.tracing.setup_tracing``): then the API's tracer is a no-op, ``trace_headers`` returns nothing and
``record_consumed`` returns at once, so an untraced system pays one ``isinstance`` per call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from eventstore import headers as h
from eventstore.model import StoredMessage

_PROPAGATOR: Final = TraceContextTextMapPropagator()
TRACER_NAME: Final = "jetledger"


def enabled() -> bool:
    """True when an SDK tracer provider is installed (spans are recorded and exported)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def trace_headers(context: otel_context.Context | None = None) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span, or ``{}`` when none records."""
    if not enabled():
        return {}
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return {k: v for k, v in carrier.items() if k in (h.TRACEPARENT, h.TRACESTATE)}


def context_from(headers: Mapping[str, str]) -> otel_context.Context | None:
    """The remote span context a message's (or a call's) headers carry, or ``None``."""
    if h.TRACEPARENT not in headers:
        return None
    return _PROPAGATOR.extract(
        {k: headers[k] for k in (h.TRACEPARENT, h.TRACESTATE) if k in headers}
    )


def record_consumed(
    name: str, stream: str, messages: Iterable[StoredMessage], start_ns: int, end_ns: int
) -> None:
    """One CONSUMER span per traced message of a committed batch, child of the message's
    ``traceparent``, from the batch's start to its commit (the time the message waited for)."""
    if not enabled():
        return
    spans = tracer()
    for message in messages:
        parent = context_from(message.headers)
        if parent is None:
            continue
        span = spans.start_span(
            f"{name} apply",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            start_time=start_ns,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": message.subject,
                "jetledger.stream": stream,
                "jetledger.sequence": message.sequence,
                "jetledger.projection": name,
            },
        )
        span.end(end_time=end_ns)
