"""Rebuilding a gRPC method handler around a wrapped behaviour.

Every server interceptor here (observing, access, the status boundary) does the same thing: take
the handler gRPC found for a method, wrap its behaviour, and build a handler of the same kind with
the same (de)serializers. ``WrappingInterceptor`` is the shared shape (an unknown method is left to
gRPC's UNIMPLEMENTED); ``rewrap`` rebuilds a handler; ``invoke`` calls a unary behaviour, which may
be a plain function or a coroutine function.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the type stubs


@dataclass(frozen=True, slots=True)
class Kind:
    """Which of the four RPC kinds a behaviour serves."""

    request_streaming: bool
    response_streaming: bool


_KINDS: tuple[tuple[str, Callable[..., Any], Kind], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, Kind(False, False)),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, Kind(False, True)),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, Kind(True, False)),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, Kind(True, True)),
)


def rewrap(
    handler: Handler,
    wrap: Callable[[Any, Kind], Any],
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """``handler`` with its behaviour replaced by ``wrap(behaviour, kind)``, or ``handler`` itself
    when ``wrap`` returns None (a kind the interceptor leaves alone). ``request_deserializer``
    replaces the handler's own when given."""
    for attribute, build, kind in _KINDS:
        behavior = getattr(handler, attribute)
        if behavior is None:
            continue
        wrapped = wrap(behavior, kind)
        if wrapped is None:
            return handler
        built: Handler = build(
            wrapped,
            request_deserializer=request_deserializer or handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return built
    return handler


async def invoke(behavior: Callable[[Any, Any], Any], request: Any, context: Any) -> Any:
    """Call a unary behaviour (a function or a coroutine function) and return its answer."""
    result = behavior(request, context)
    return await result if inspect.isawaitable(result) else result


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor that wraps the handler of every known method (``wrap``)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: gRPC answers UNIMPLEMENTED
        return self.wrap(handler, handler_call_details)

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        """The handler to serve ``details.method`` with instead of ``handler``."""
        raise NotImplementedError
