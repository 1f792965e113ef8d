"""Per-RPC metrics from one server interceptor, and the process/platform collectors.

Every label value is bounded: the method is one the server hosts (an unknown method never reaches
an interceptor's handler), the code is a gRPC status name. No exception class names, no ids.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the type stubs

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


def _final_code(context: Any, failure: BaseException | None) -> grpc.StatusCode:
    """The status the client sees: the code set or aborted with, else OK or UNKNOWN/CANCELLED."""
    code = None
    try:
        code = context.code()
    except Exception:  # an older context without code(): fall back below
        code = None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # grpc.aio keeps the cygrpc integer after abort()
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return candidate
    if failure is None:
        return grpc.StatusCode.OK
    if isinstance(failure, (GeneratorExit, asyncio.CancelledError)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC of the server it is installed on (outermost: refusals count)."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return wrap_handler(handler, handler_call_details.method, self._metrics.observe)


Observe = Callable[[str, grpc.StatusCode, float], None]


def wrap_handler(handler: Handler, method: str, observe: Observe) -> Handler:
    """A handler like ``handler`` that reports its method, final status and duration."""
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    )
    for attribute, build in kinds:
        behavior = getattr(handler, attribute)
        if behavior is not None:
            wrapped: Any = _timed(behavior, method, observe)
            built: Handler = build(
                wrapped,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            return built
    return handler


def _timed(behavior: Any, method: str, observe: Observe) -> Callable[[Any, Any], Any]:
    if inspect.isasyncgenfunction(behavior):

        async def generate(request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            failure: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                failure = exc
                raise
            finally:
                observe(method, _final_code(context, failure), time.perf_counter() - started)

        return generate

    async def call(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as exc:
            failure = exc
            raise
        finally:
            observe(method, _final_code(context, failure), time.perf_counter() - started)

    return call


_RPC_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, RpcMetrics] = weakref.WeakKeyDictionary()


def rpc_metrics(registry: CollectorRegistry) -> RpcMetrics:
    """The registry's one ``RpcMetrics`` (a second server on the same registry shares it)."""
    found = _RPC_METRICS.get(registry)
    if found is None:
        found = _RPC_METRICS[registry] = RpcMetrics(registry)
    return found
