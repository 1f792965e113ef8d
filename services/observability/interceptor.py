"""The one server interceptor every jetledger gRPC server installs first (outermost).

For each call it: counts and times it by method and final status code (``RpcMetrics``); opens a
SERVER span, child of the caller's ``traceparent`` metadata if any (tracing on only); and makes
every line logged while serving it carry the request's command id (``about_command``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from eventstore import tracing
from services.grpc_handlers import Handler, WrappingInterceptor, invoke, rewrap
from services.observability.logs import about_command
from services.observability.metrics import RpcMetrics, split_method

Observe = Callable[[str, grpc.StatusCode, float], None]


class ObservingInterceptor(WrappingInterceptor):
    """Metrics, a span and the log context for every RPC of the server it is installed on."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        metadata = {
            key: value for key, value in details.invocation_metadata or () if isinstance(value, str)
        }
        return wrap_handler(handler, details.method, self._metrics.observe, metadata)


def wrap_handler(
    handler: Handler, method: str, observe: Observe, metadata: dict[str, str] | None = None
) -> Handler:
    """A handler like ``handler`` that reports its method, final status and duration."""
    return rewrap(handler, lambda behavior, _: _observed(behavior, method, observe, metadata or {}))


def command_id_of(request: Any) -> str | None:
    """The command id a request carries (``command_id``, or a transaction's ``transaction_id``)."""
    for field in ("command_id", "transaction_id"):
        value = getattr(request, field, None)
        if isinstance(value, str) and value:
            return value
    return None


def final_code(context: Any, failure: BaseException | None) -> grpc.StatusCode:
    """The status the client sees: the code set or aborted with, else OK or UNKNOWN/CANCELLED."""
    try:
        code = context.code()
    except Exception:  # a context without code(): fall back below
        code = None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # grpc.aio may keep the integer value
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return candidate
    if failure is None:
        return grpc.StatusCode.OK
    if isinstance(failure, (GeneratorExit, asyncio.CancelledError)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


@contextlib.contextmanager
def _observing(
    method: str, observe: Observe, metadata: dict[str, str], request: Any, context: Any
) -> Iterator[None]:
    started = time.perf_counter()
    failure: BaseException | None = None
    span: trace.Span | None = None
    token: object = None
    if tracing.enabled():
        service, name = split_method(method)
        span = tracing.tracer().start_span(
            method.lstrip("/"),
            context=tracing.context_from(metadata),
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
    try:
        with about_command(command_id_of(request)):
            yield
    except BaseException as exc:
        failure = exc
        raise
    finally:
        code = final_code(context, failure)
        observe(method, code, time.perf_counter() - started)
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code not in (grpc.StatusCode.OK,):
                span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
            span.end()
            otel_context.detach(token)  # type: ignore[arg-type]


def _observed(
    behavior: Any, method: str, observe: Observe, metadata: dict[str, str]
) -> Callable[[Any, Any], Any]:
    if inspect.isasyncgenfunction(behavior):

        async def generate(request: Any, context: Any) -> AsyncIterator[Any]:
            with _observing(method, observe, metadata, request, context):
                async for response in behavior(request, context):
                    yield response

        return generate

    async def call(request: Any, context: Any) -> Any:
        with _observing(method, observe, metadata, request, context):
            return await invoke(behavior, request, context)

    return call
